from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from django.core.management import CommandError, call_command

from providers.models import LLMModel, Provider
from routing.auth import api_key_cache_clear
from routing.models import ApiKey, PolicyVersion, RoutingPolicy
from routing.services.policies import policy_publish

CATALOG = {
    "providers": [
        {
            "name": "local-vllm",
            "kind": "openai_compatible",
            "base_url": "http://127.0.0.1:8001/v1",
            "api_key_env": "VLLM_KEY",
        }
    ],
    "models": [
        {
            "name": "llama-3.1-8b",
            "provider": "local-vllm",
            "input_usd_per_mtok": 0.02,
            "output_usd_per_mtok": 0.03,
            "context_window": 131072,
            "tier": 2,
            "capabilities": ["json"],
        },
        {
            "name": "big",
            "provider": "local-vllm",
            "input_usd_per_mtok": 5,
            "output_usd_per_mtok": 15,
            "tier": 5,
        },
    ],
    "policies": [
        {
            "slug": "cheap-first",
            "strategy": "hybrid",
            "alpha": 0.3,
            "max_cost_usd": 0.01,
            "models": ["llama-3.1-8b"],
            "rules": [
                {
                    "name": "code-to-big",
                    "when": {"feature": "code_signal", "op": ">", "value": 2},
                    "then": {"action": "force", "model": "big"},
                }
            ],
        },
    ],
}


def write(tmp_path: Path, data: object, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def load(path: Path) -> str:
    out = StringIO()
    call_command("load_catalog", str(path), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_loads_the_catalog_idempotently(tmp_path: Path) -> None:
    path = write(tmp_path, CATALOG)
    first = load(path)
    assert "1 providers, 2 models, 1 policies" in first and "cheap-first v1" in first
    second = load(path)
    assert "new policy version" not in second
    assert Provider.objects.count() == 1 and LLMModel.objects.count() == 2
    assert PolicyVersion.objects.count() == 1
    provider = Provider.objects.get()
    assert provider.api_key_env == "VLLM_KEY"
    version = RoutingPolicy.objects.get(slug="cheap-first").current
    assert (
        version is not None
        and version.allowed_models == ["llama-3.1-8b"]
        and version.rules[0]["name"] == "code-to-big"
    )


@pytest.mark.django_db
def test_a_changed_policy_becomes_a_new_version_and_the_old_one_is_kept(tmp_path: Path) -> None:
    load(write(tmp_path, CATALOG))
    policies: Any = CATALOG["policies"]
    changed = {**CATALOG, "policies": [{**policies[0], "alpha": 0.6}]}
    assert "cheap-first v2" in load(write(tmp_path, changed))
    versions = list(
        PolicyVersion.objects.filter(policy__slug="cheap-first")
        .order_by("version")
        .values_list("version", "alpha")
    )
    assert versions == [(1, 0.3), (2, 0.6)]
    assert RoutingPolicy.objects.get(slug="cheap-first").current.version == 2  # type: ignore[union-attr]


@pytest.mark.django_db
def test_json_catalogs_load_too(tmp_path: Path) -> None:
    import json

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(CATALOG))
    assert "2 models" in load(path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["models"][0].update(tier=9), "models[llama-3.1-8b].tier"),
        (
            lambda c: c["models"][0].update(provider="ghost"),
            "models[llama-3.1-8b].provider: unknown provider 'ghost'",
        ),
        (
            lambda c: c["models"][0].update(input_usd_per_mtok="cheap"),
            "models[llama-3.1-8b].input_usd_per_mtok",
        ),
        (lambda c: c["models"][0].update(colour="red"), "models[llama-3.1-8b]: unknown key(s) colour"),
        (lambda c: c["providers"][0].update(kind="magic"), "providers[local-vllm].kind"),
        (lambda c: c["policies"][0].update(alpha=2), "policies[cheap-first].alpha"),
        (lambda c: c["policies"][0].update(strategy="nope"), "policies[cheap-first].strategy"),
        (
            lambda c: c["policies"][0].update(models=["ghost"]),
            "policies[cheap-first].allowed_models: unknown model(s) ghost",
        ),
        (
            lambda c: c["policies"][0]["rules"][0]["when"].update(feature="nope"),
            "policies[cheap-first].rules[0].when.feature",
        ),
        (
            lambda c: c["policies"][0]["rules"][0]["then"].update(action="explode"),
            "policies[cheap-first].rules[0].then.action",
        ),
        (lambda c: c.update(widgets=[]), "unknown top-level key(s): widgets"),
        (
            lambda c: c["policies"][0].update(slug="Bad Slug!"),
            "policies[Bad Slug!].slug: 'Bad Slug!' is not a slug",
        ),
        (lambda c: c["policies"][0].update(options={"cache": "yes"}), "policies[cheap-first].options.cache"),
        (
            lambda c: c["policies"][0].update(options={"cache": {"ttl_s": -5}}),
            "policies[cheap-first].options.cache.ttl_s",
        ),
        (
            lambda c: c["policies"][0].update(options={"spend_target": {"usd": -1}}),
            "policies[cheap-first].options.spend_target.usd",
        ),
        (
            lambda c: c["policies"][0].update(options={"spend_target": {"usd": 5, "period": "century"}}),
            "policies[cheap-first].options.spend_target.period",
        ),
        (
            lambda c: c["policies"][0].update(options={"default_model": "nope"}),
            "policies[cheap-first].options.default_model: unknown model 'nope'",
        ),
        (
            lambda c: c["models"][0].update(input_usd_per_mtok=float("inf")),
            "models[llama-3.1-8b].input_usd_per_mtok: must be a finite number",
        ),
        (
            lambda c: c["models"][0].update(output_usd_per_mtok=float("nan")),
            "models[llama-3.1-8b].output_usd_per_mtok: must be a finite number",
        ),
        (
            lambda c: c["providers"][0].update(base_url="ftp://127.0.0.1/v1"),
            "providers[local-vllm].base_url: must be an http:// or https:// URL with a host",
        ),
        (
            lambda c: c["providers"][0].update(base_url="not a url"),
            "providers[local-vllm].base_url: must be an http:// or https:// URL with a host",
        ),
        (
            lambda c: c["providers"][0].update(read_timeout_s=-1),
            "providers[local-vllm].read_timeout_s: must be a positive number of seconds",
        ),
        (
            lambda c: c["providers"][0].update(connect_timeout_s="soon"),
            "providers[local-vllm].connect_timeout_s: must be a positive number of seconds",
        ),
        (lambda c: c["policies"][0].update(max_cost_usd=float("nan")), "policies[cheap-first].max_cost_usd"),
        (
            lambda c: c["policies"][0].update(max_latency_ms=float("inf")),
            "policies[cheap-first].max_latency_ms",
        ),
        (
            lambda c: c["policies"][0]["rules"][0]["when"].update(value=float("nan")),
            "policies[cheap-first].rules[0].when.value: must be a finite number",
        ),
        (
            lambda c: c["policies"][0].update(models="llama-3.1-8b"),
            "policies[cheap-first].allowed_models: must be a list of model names",
        ),
        (
            lambda c: c["policies"][0].update(required_tags=["region"]),
            "policies[cheap-first].required_tags: must be an object",
        ),
        (
            lambda c: c["policies"][0].update(required_tags=["eu"]),
            "policies[cheap-first].required_tags: must be an object",
        ),
        (
            lambda c: c["policies"][0].update(required_capabilities="json"),
            "policies[cheap-first].required_capabilities: must be a list of capability names",
        ),
        (
            lambda c: c["policies"][0].update(options=["cache"]),
            "policies[cheap-first].options: must be an object",
        ),
        (lambda c: c["policies"][0].update(options=5), "policies[cheap-first].options: must be an object"),
        (
            lambda c: c["models"][0].update(enabled="false"),
            "models[llama-3.1-8b].enabled: must be true or false",
        ),
        (
            lambda c: c["providers"][0].update(enabled="off"),
            "providers[local-vllm].enabled: must be true or false",
        ),
        (lambda c: c["models"][1].update(name=5), "models[1].name: must be a string"),
        (lambda c: c["models"].append(dict(c["models"][0])), "models[llama-3.1-8b]: listed twice"),
        (lambda c: c["policies"].append(dict(c["policies"][0])), "policies[cheap-first]: listed twice"),
        (
            lambda c: c.update(deployments=[{"model": "big", "name": 5, "provider": "local-vllm"}]),
            "deployments[0].name: must be a string",
        ),
        (
            lambda c: c.update(
                deployments=[{"model": "big", "name": "a", "provider": "local-vllm", "enabled": "no"}]
            ),
            "deployments[big/a].enabled: must be true or false",
        ),
        (
            lambda c: c["models"][0].update(sim_profile={"failrate": 1.0}),
            "models[llama-3.1-8b].sim_profile: unknown key(s) failrate",
        ),
        (
            lambda c: c["models"][0].update(sim_profile={"failure_rate": 2}),
            "models[llama-3.1-8b].sim_profile.failure_rate: must be from 0 to 1",
        ),
        (
            lambda c: c["models"][0].update(sim_profile={"failure_rate": 1, "fail_status": 200}),
            "models[llama-3.1-8b].sim_profile.fail_status: must be an HTTP error status",
        ),
    ],
)
def test_bad_catalogs_fail_with_the_offending_key_and_change_nothing(
    tmp_path: Path, mutate: object, message: str
) -> None:
    import copy

    data = copy.deepcopy(CATALOG)
    mutate(data)  # type: ignore[operator]
    with pytest.raises(
        CommandError,
        match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        load(write(tmp_path, data))
    assert not LLMModel.objects.exists() and not RoutingPolicy.objects.exists()


@pytest.mark.django_db
def test_a_file_that_is_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers: [unclosed")
    with pytest.raises(CommandError, match="not valid YAML") as raised:
        load(path)
    assert str(raised.value).count(str(path)) == 1  # the file is named once
    with pytest.raises(CommandError, match="cannot read"):
        load(tmp_path / "missing.yaml")


@pytest.mark.django_db
def test_names_longer_than_their_column_are_refused_naming_the_key(tmp_path: Path) -> None:
    long_model, long_slug = "m" * 201, "p" * 101
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {
                "models": [
                    {"name": long_model, "provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
                ]
            },
            "models[" + "m" * 200 + "].name: at most 200 characters",
        ),
        ({"policies": [{"slug": long_slug}]}, "].slug: at most 100 characters (got 101)"),
        ({"providers": [{"name": "x" * 101, "kind": "simulated"}]}, ".name: at most 100 characters"),
    ]
    for data, message in cases:
        path = tmp_path / "long.yaml"
        path.write_text(yaml.safe_dump({"providers": [{"name": "sim", "kind": "simulated"}], **data}))
        with pytest.raises(CommandError) as raised:
            load(path)
        assert message in str(raised.value)
    assert not LLMModel.objects.filter(name=long_model).exists()


@pytest.mark.django_db
def test_seed_demo_keeps_what_operators_changed_unless_reset() -> None:
    call_command("seed_demo", stdout=StringIO())
    policy_publish(slug="default", created_by="operator", strategy="pre_inference", alpha=0.9)
    LLMModel.objects.filter(name="gpt-4o-mini").update(tier=1)
    edited = RoutingPolicy.objects.get(slug="default").current.version  # type: ignore[union-attr]
    out = StringIO()
    call_command("seed_demo", stdout=out)  # what every `make run` does
    assert "0 providers, 0 models, 0 policies created" in out.getvalue()
    assert "already there, left as they are" in out.getvalue()
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and (current.version, current.alpha) == (edited, 0.9)
    assert LLMModel.objects.get(name="gpt-4o-mini").tier == 1
    call_command("seed_demo", "--reset", stdout=StringIO())
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and current.version == edited + 1 and current.strategy == "hybrid"
    assert LLMModel.objects.get(name="gpt-4o-mini").tier != 1


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_routable() -> None:
    call_command("seed_demo", stdout=StringIO())
    counts = (LLMModel.objects.count(), PolicyVersion.objects.count())
    call_command("seed_demo", stdout=StringIO())
    assert (LLMModel.objects.count(), PolicyVersion.objects.count()) == counts
    assert counts[0] >= 6
    assert RoutingPolicy.objects.get(slug="default").current.strategy == "hybrid"  # type: ignore[union-attr]
    assert set(Provider.objects.values_list("kind", flat=True)) == {"simulated"}


@pytest.mark.django_db
def test_create_api_key_prints_only_the_key() -> None:
    call_command("seed_demo", stdout=StringIO())
    out = StringIO()
    call_command("create_api_key", "my-app", "--policy", "cheap-first", stdout=out)
    key = out.getvalue().strip()
    assert "\n" not in key and "." in key
    row = cast(ApiKey, ApiKey.objects.get_from_key(key))
    assert (
        row.name == "my-app" and row.default_policy is not None and row.default_policy.slug == "cheap-first"
    )
    with pytest.raises(CommandError, match="Unknown policy"):
        call_command("create_api_key", "x", "--policy", "ghost", stdout=StringIO())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["  "], "name: must be 1 to 50 characters"),
        (["x" * 51], "name: must be 1 to 50 characters"),
        (["app", "--daily-budget-usd", "-5"], "daily_budget_usd: must be an amount of USD"),
        (["app", "--monthly-budget-usd", "nan"], "monthly_budget_usd: must be an amount of USD"),
        (["app", "--daily-budget-usd", "inf"], "daily_budget_usd: must be an amount of USD"),
        (["app", "--daily-budget-usd", "0.00001"], r"daily_budget_usd: at most 4 decimals .* got 0.00001"),
        (["app", "--rpm", "-1"], "rpm_limit: must be at least 1"),
        (["app", "--rpm", "0"], "rpm_limit: must be at least 1"),
    ],
)
def test_create_api_key_refuses_bad_values_with_a_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args, stdout=StringIO())
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_keys_are_listed_by_prefix_and_revoked_for_good(api: Any) -> None:
    call_command("seed_demo", stdout=StringIO())
    out = StringIO()
    call_command("create_api_key", "billing-app", "--rpm", "60", "--daily-budget-usd", "2.5", stdout=out)
    key = out.getvalue().strip()
    prefix = key.split(".")[0]
    listing = StringIO()
    call_command("api_keys", stdout=listing)
    line = next(row for row in listing.getvalue().splitlines() if row.startswith(prefix))
    assert "active" in line and "$2.5000/day, 60 rpm" in line and line.endswith("billing-app")
    assert key not in listing.getvalue()  # the key itself is never shown again
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    assert api("/api/v1/route", ask, key=key).status_code == 200
    said = StringIO()
    call_command("revoke_api_key", prefix, stdout=said)
    assert said.getvalue().strip() == f"revoked {prefix} (billing-app)"
    api_key_cache_clear()  # the process remembers a key row for SCOPE_API_KEY_CACHE_SECONDS
    assert api("/api/v1/route", ask, key=key).status_code == 401
    with pytest.raises(CommandError, match="No API key with prefix 'nope'"):
        call_command("revoke_api_key", "nope")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"models": ["big"], "denied_models": ["big"]}, "denied_models: big also in allowed_models"),
        ({"required_capabilities": ["teleport"]}, r"no model has teleport \(models have: json\)"),
        ({"models": ["big"], "required_capabilities": ["json"]}, "every request would be refused"),
        ({"required_tags": {"region": "mars"}}, "no model satisfies"),
    ],
)
def test_a_policy_no_model_can_satisfy_is_refused_at_publish(
    tmp_path: Path, policy: dict[str, Any], message: str
) -> None:
    data = {**CATALOG, "policies": [{"slug": "impossible", **policy}]}
    with pytest.raises(CommandError, match=message):
        load(write(tmp_path, data))
    assert not RoutingPolicy.objects.filter(slug="impossible").exists()
