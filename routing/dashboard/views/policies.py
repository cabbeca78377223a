from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from providers.models import LLMModel
from routing.dashboard.forms import PolicyForm
from routing.dashboard.replay import policy_replay
from routing.dashboard.roles import READ_ALL, WRITE, role_required
from routing.dashboard.views.common import error_response, page
from routing.models import PolicyVersion, RoutingPolicy
from routing.services.policies import policy_publish
from scope_site.errors import ApplicationError


def _models() -> list[str]:
    return list(LLMModel.objects.order_by("name").values_list("name", flat=True))


def _policy(slug: str, *, allow_new: bool) -> RoutingPolicy | None:
    policy = RoutingPolicy.objects.select_related("current").filter(slug=slug).first()
    if policy is None and not allow_new:
        raise Http404(slug)
    return policy


def _editor(
    request: HttpRequest, slug: str, policy: RoutingPolicy | None, form: PolicyForm, **extra: object
) -> dict:
    versions = list(PolicyVersion.objects.filter(policy=policy).order_by("-version")[:50]) if policy else []
    return {"slug": slug, "policy": policy, "versions": versions, "form": form, "active": "policies", **extra}


@require_GET
@role_required(READ_ALL)
def policy_list(request: HttpRequest) -> HttpResponse:
    new_slug = slugify(request.GET.get("new", ""))
    if new_slug:
        return redirect(reverse("dashboard:policy", args=[new_slug]) + "?new=1")
    policies = RoutingPolicy.objects.select_related("current").order_by("slug")
    return page(request, "dashboard/policies.html", {"policies": policies, "active": "policies"})


@require_GET
@role_required(READ_ALL)
def policy_detail(request: HttpRequest, slug: str) -> HttpResponse:
    policy = _policy(slug, allow_new=request.GET.get("new") == "1")
    base = policy.current if policy else None
    wanted = request.GET.get("version", "")
    if policy and wanted.isdigit():
        base = PolicyVersion.objects.filter(policy=policy, version=int(wanted)).first() or base
    form = PolicyForm(initial=PolicyForm.initial_from(base), models=_models())
    return page(request, "dashboard/policy.html", _editor(request, slug, policy, form, base=base))


@require_POST
@role_required(WRITE)
def policy_publish_view(request: HttpRequest, slug: str) -> HttpResponse:
    policy = _policy(slug, allow_new=True)
    models = _models()
    form = PolicyForm(request.POST, models=models)
    if form.is_valid():
        try:
            version = policy_publish(
                slug=slug,
                created_by=request.user.get_username(),
                note=form.cleaned_data.get("note") or "",
                known_models=set(models),
                expected_version=form.cleaned_data.get("base_version"),
                **form.policy_values(),
            )
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            target = reverse("dashboard:policy", args=[slug]) + f"?published={version.version}"
            return HttpResponseClientRedirect(target) if getattr(request, "htmx", False) else redirect(target)
    context = _editor(request, slug, policy, form, base=policy.current if policy else None)
    template = "dashboard/policy.html#editor" if getattr(request, "htmx", False) else "dashboard/policy.html"
    return page(request, template, context, status=400)


@require_POST
@role_required(READ_ALL)  # a what-if writes nothing, so auditors may run it too
def policy_replay_view(request: HttpRequest, slug: str) -> HttpResponse:
    policy = _policy(slug, allow_new=True)
    form = PolicyForm(request.POST, models=_models())
    if not form.is_valid():
        return page(request, "dashboard/policy.html#replay", {"form": form, "replay": None}, status=400)
    spec = form.spec(slug=slug, version=(policy.current.version + 1) if policy and policy.current else 1)
    try:
        result = policy_replay(
            policy=spec,
            limit=form.cleaned_data["replay_limit"],
            source_policy=slug if form.cleaned_data["replay_scope"] == "policy" else None,
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    rows = [(m, result.logged.mix.get(m, 0), result.replayed.mix.get(m, 0)) for m in result.models]
    if not getattr(request, "htmx", False):  # the no-JavaScript path: the whole page with the result
        base = policy.current if policy else None
        context = _editor(request, slug, policy, form, base=base, replay=result, mix_rows=rows)
        return page(request, "dashboard/policy.html", context)
    return page(request, "dashboard/policy.html#replay", {"form": form, "replay": result, "mix_rows": rows})
