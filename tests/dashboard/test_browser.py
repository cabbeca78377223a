"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

Never downloads a browser: /usr/bin/chromium comes from apt (`.ci/run` installs it when missing);
without it these tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from routing.models import DecisionLog, RoutingPolicy

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install -y chromium"
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the ORM calls the tests make
    # between browser steps are ordinary blocking calls, which Django must be told are fine.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            yield instance
            instance.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def users(transactional_db: Any) -> None:
    from routing.dashboard.accounts import user_create_or_update
    from routing.dashboard.roles import Role

    for role in Role:
        user_create_or_update(actor="test", username=role.value, role=role, password=PASSWORD)


@pytest.fixture
def login(browser: Any, live_server: Any, users: None) -> Iterator[Callable[[str], Any]]:
    contexts: list[Any] = []

    def as_(username: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield as_
    for context in contexts:
        context.close()


@pytest.mark.parametrize(
    ("role", "sees", "hidden"),
    [
        ("operator", ["Overview", "Policies", "Decisions", "Audit"], []),
        ("auditor", ["Overview", "Policies", "Decisions", "Audit"], []),
        (
            "viewer",
            ["Overview", "Providers & models", "Experiments", "Predictor"],
            ["Decisions", "Audit", "Policies"],
        ),
    ],
)
def test_each_role_logs_in_and_sees_its_pages(
    login: Callable[[str], Any], live_server: Any, role: str, sees: list[str], hidden: list[str]
) -> None:
    page = login(role)
    nav = page.locator("header nav").inner_text()
    assert all(name in nav for name in sees)
    assert not any(name in nav for name in hidden)
    assert page.locator(f".badge.role-{role}").inner_text() == role
    response = page.goto(f"{live_server.url}/decisions/")
    assert response.status == (403 if role == "viewer" else 200)


def test_a_wrong_password_is_refused(browser: Any, live_server: Any, users: None) -> None:
    page = browser.new_page()
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert "did not match" in page.locator(".error").inner_text()
    page.close()


@pytest.fixture
def traffic(transactional_db: Any, catalog: Any) -> list[DecisionLog]:
    from routing.services.route import route_decide

    prompts = ["Write a Python function to merge two sorted lists", "What is 12 * 7?", "hello!"]
    return [
        route_decide(messages=[{"role": "user", "content": p}], api_key=None, metadata={}).row
        for p in prompts * 3
    ]


def test_operator_edits_a_policy_replays_it_and_publishes(
    login: Callable[[str], Any], live_server: Any, traffic: list[DecisionLog]
) -> None:
    page = login("operator")
    page.goto(f"{live_server.url}/policies/default/")
    page.fill("#id_alpha", "0")
    page.fill(
        "#id_rules",
        '[{"name": "code-to-large", "when": {"feature": "code_signal", "op": ">=", "value": 1}, '
        '"then": {"action": "force", "model": "large"}}]',
    )
    page.click("text=What-if replay")
    page.wait_for_selector("#replay >> text=With this edit")
    summary = page.locator("#replay").inner_text()
    assert re.search(r"9 decisions re-decided", summary)
    assert "large" in summary
    assert RoutingPolicy.objects.get(slug="default").current.version == 1  # type: ignore[union-attr]
    page.click("text=Publish new version")
    page.wait_for_selector("text=Published version 2")
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and current.alpha == 0.0 and current.rules[0]["name"] == "code-to-large"
    assert current.created_by == "operator"


def test_an_invalid_rule_shows_its_error_in_place(
    login: Callable[[str], Any], live_server: Any, traffic: list[DecisionLog]
) -> None:
    page = login("operator")
    page.goto(f"{live_server.url}/policies/default/")
    page.fill(
        "#id_rules",
        '[{"when": {"feature": "nope", "op": ">", "value": 1}, "then": {"action": "force", "model": "large"}}]',
    )
    page.click("text=Publish new version")
    page.wait_for_selector("#policy-form >> text=unknown feature")
    assert RoutingPolicy.objects.get(slug="default").current.version == 1  # type: ignore[union-attr]


def test_operator_opens_a_decision_and_reads_why(
    login: Callable[[str], Any], live_server: Any, traffic: list[DecisionLog]
) -> None:
    page = login("operator")
    page.goto(f"{live_server.url}/decisions/")
    page.locator("#results tbody tr td a").first.click()
    page.wait_for_selector("text=Candidates")
    newest = DecisionLog.objects.order_by("-created_at", "-id").first()
    assert newest is not None and str(newest.id) in page.url
    chosen = page.locator("tr.chosen").inner_text()
    assert newest.chosen_model in chosen
    assert page.locator("table.grid tbody tr").count() >= 3
    assert newest.explanation["summary"][:20] in page.locator(".summary").inner_text()


def test_auditor_is_refused_every_write_and_verifies_the_chain(
    login: Callable[[str], Any], live_server: Any, traffic: list[DecisionLog]
) -> None:
    from providers.models import LLMModel

    page = login("auditor")
    page.goto(f"{live_server.url}/policies/default/")
    assert page.locator("text=Publish new version").count() == 0
    assert page.locator("fieldset.editor[disabled]").count() == 1
    page.goto(f"{live_server.url}/providers/")
    assert page.locator("button", has_text="Disable").count() == 0
    model = LLMModel.objects.first()
    assert model is not None
    writes = [
        f"/providers/models/{model.pk}/enabled",
        "/policies/default/publish",
        "/experiments/1/stop",
        "/experiments/1/promote",
        "/predictor/retrain",
        "/audit/seal",
    ]
    statuses = page.evaluate(
        """async (urls) => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const out = [];
            for (const url of urls) {
                const r = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token},
                                            body: new URLSearchParams({enabled: '0', alpha: '0', strategy: 'hybrid'})});
                out.push(r.status);
            }
            return out;
        }""",
        writes,
    )
    assert statuses == [403] * len(writes)
    assert RoutingPolicy.objects.get(slug="default").current.version == 1  # type: ignore[union-attr]
    page.goto(f"{live_server.url}/audit/")
    page.click("text=Verify every row and the chain")
    page.wait_for_selector("text=Chain intact")
    assert "9 rows verified" in page.locator("#verify").inner_text()


def test_the_operator_sees_verdicts_and_one_interval_chart_per_metric(
    login: Callable[[str], Any], live_server: Any, transactional_db: Any, catalog: Any
) -> None:
    from routing.services.experiment_stats import experiment_stats_refresh
    from routing.services.experiments import experiment_upsert
    from tests.dashboard.test_experiments import NOISE, run_traffic
    from tests.factories import make_api_key, make_policy

    make_policy("cheap", strategy="pre_inference", alpha=0.05)
    experiment = experiment_upsert(
        actor="test", name="alpha-test", policy="default", arms=[{"policy": "default"}, {"policy": "cheap"}]
    )
    key, _ = make_api_key("browser-app")
    run_traffic(
        key,
        40,
        score=lambda arm, n: (0.8 if arm == "default" else 0.35) + NOISE[n % 5],
        latency=lambda arm, n: (120.0 if arm == "default" else 240.0) + 3 * n,
    )
    experiment_stats_refresh(experiment_id=experiment.pk)
    page = login("operator")
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(live_server.url) else None)
    page.goto(f"{live_server.url}/experiments/")
    analysis = page.locator(f"#experiment-{experiment.pk}-analysis")
    assert "default better on quality" in analysis.locator(".tests-analysis").inner_text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas[data-chart=arm_interval]')]"
        ".every(c => window.Chart && window.Chart.getChart(c))"
    )
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('canvas[data-chart=arm_interval]')].map(c => {"
        " const chart = window.Chart.getChart(c);"
        " return [c.dataset.source, chart.data.labels, chart.data.datasets[1].data]; })"
    )
    assert [d[0] for d in drawn] == [
        f"experiment-{experiment.pk}-{m}" for m in ("quality", "cost", "latency")
    ]
    assert drawn[0][1] == ["cheap", "default"] and drawn[0][2][1] > drawn[0][2][0]
    assert not analysis.locator("details pre").is_visible()  # the raw JSON waits behind <details>
    analysis.locator("details summary").click()
    assert '"comparisons"' in analysis.locator("details pre").inner_text()
    if os.environ.get("SCOPE_SCREENSHOTS"):
        analysis.screenshot(path=os.path.join(os.environ["SCOPE_SCREENSHOTS"], "experiment-analysis.png"))
    assert external == []  # no CDN: every asset came from the server under test
