"""Re-take the web UI screenshots in this folder (headless Debian Chromium, Playwright for Python).

    .venv/bin/python docs/screenshots/take_screenshots.py

Builds a throw-away embedded instance (SQLite in a temporary directory): the demo catalog, a
predictor trained on ../shared/data/routellm-gsm8k, an experiment, 6,000 synthetic decisions over 7 days (real decide() calls, see
routing/dashboard/synthetic.py), the rollup and the audit seal; starts the dev server on a free
port, logs in as operator / auditor and saves one PNG per page. Never downloads a browser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PASSWORD = "screenshots-only"

SETUP = """
from datetime import timedelta
from django.utils import timezone
from routing.dashboard.accounts import user_create_or_update
from routing.dashboard.roles import Role
from routing.dashboard.synthetic import generate
from routing.services.audit import audit_seal
from routing.services.experiments import experiment_upsert
from routing.services.rollup import rollup_catch_up
from routing.services.route import route_decide
for role in Role:
    user_create_or_update(username=role.value, role=role, password=%(password)r, actor="cli:take_screenshots")
experiment_upsert(name="alpha-test", policy="default",
                  arms=[{"policy": "default", "name": "balanced"}, {"policy": "cheap-first", "name": "cheap"}],
                  description="Does a cheaper default (alpha 0.2) keep feedback scores?",
                  actor="cli:take_screenshots")
generate(decisions=6000, days=7, policies=["default", "cheap-first", "quality-first", "eu-only"],
         experiment=("alpha-test", {"balanced": "default", "cheap": "cheap-first"}), pool_size=300, feedback_share=0.08)
later = timezone.now() + timedelta(minutes=1)
rollup_catch_up(now=later)
audit_seal(now=later)
route_decide(messages=[{"role": "user", "content": "Write a Python function that merges two sorted lists and explain its complexity"}],
             api_key=None, metadata={"plan": "premium"}, user="ana")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    if not os.path.exists(CHROMIUM):
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="scope-shots-")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(SCOPE_VAR_DIR=tmp, DJANGO_SETTINGS_MODULE="scope_site.settings")
    py = str(ROOT / ".venv" / "bin" / "python")
    manage = [py, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "seed_demo"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    data = ROOT.parent / "shared" / "data" / "routellm-gsm8k"  # a small real data set for the predictor
    if (data / "outcomes.jsonl").exists():
        quiet = {"env": env, "check": True, "cwd": ROOT, "stdout": subprocess.DEVNULL}
        subprocess.run(
            [*manage, "import_outcomes", str(data / "outcomes.jsonl"), "--models", str(data / "models.json")],
            **quiet,
        )  # type: ignore[call-overload]
        subprocess.run([*manage, "train_predictor", "--activate"], **quiet)  # type: ignore[call-overload]
    subprocess.run([*manage, "shell", "-c", SETUP % {"password": PASSWORD}], env=env, check=True, cwd=ROOT)
    port = _free_port()
    server = subprocess.Popen([*manage, "runserver", f"127.0.0.1:{port}", "--noreload"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            _shoot(browser, base)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _login(browser: object, base: str, username: str) -> object:
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    page.set_default_timeout(60_000)
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def _save(page: object, name: str, full: bool = True) -> None:
    page.wait_for_timeout(400)  # type: ignore[attr-defined]
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)  # type: ignore[attr-defined]
    print("saved", name)


def _shoot(browser: object, base: str) -> None:
    page = _login(browser, base, "operator")
    page.goto(f"{base}/?range=7d")  # type: ignore[attr-defined]
    _save(page, "overview")
    page.goto(f"{base}/providers/")  # type: ignore[attr-defined]
    _save(page, "providers")
    page.goto(f"{base}/policies/default/")  # type: ignore[attr-defined]
    page.fill("#id_alpha", "0.3")  # type: ignore[attr-defined]
    page.select_option("#id_replay_scope", "all")  # type: ignore[attr-defined]
    page.fill("#id_replay_limit", "1000")  # type: ignore[attr-defined]
    page.click("text=What-if replay")  # type: ignore[attr-defined]
    page.wait_for_selector("#replay >> text=With this edit")  # type: ignore[attr-defined]
    _save(page, "policy-replay")
    page.goto(f"{base}/experiments/")  # type: ignore[attr-defined]
    _save(page, "experiments")
    page.goto(f"{base}/predictor/")  # type: ignore[attr-defined]
    _save(page, "predictor")
    page.goto(f"{base}/decisions/")  # type: ignore[attr-defined]
    _save(page, "decisions", full=False)
    page.locator("#results tbody tr td a").first.click()  # type: ignore[attr-defined]
    page.wait_for_selector("text=Candidates")  # type: ignore[attr-defined]
    _save(page, "decision")
    auditor = _login(browser, base, "auditor")
    auditor.goto(f"{base}/audit/")  # type: ignore[attr-defined]
    auditor.click("text=Verify every row and the chain")  # type: ignore[attr-defined]
    auditor.wait_for_selector("text=Chain intact", timeout=300_000)  # type: ignore[attr-defined]
    _save(auditor, "audit")
    auditor.goto(f"{base}/activity/")  # type: ignore[attr-defined]
    _save(auditor, "activity", full=False)


if __name__ == "__main__":
    main()
