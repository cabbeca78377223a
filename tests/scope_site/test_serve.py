"""`make serve`'s gunicorn config on PostgreSQL: a group-commit writer beside the workers, used by them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from routing.models import DecisionLog
from tests.conftest import USER_MESSAGE, live_database_url, requires_postgres
from tests.factories import make_api_key, make_catalog, make_policy

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_gunicorn_starts_a_decision_writer_and_its_workers_commit_through_it(tmp_path: Path) -> None:
    make_catalog()
    make_policy("default")
    _, key = make_api_key("served")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": live_database_url(),
        "SCOPE_VAR_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DJANGO_SETTINGS_MODULE": "scope_site.settings",
    }
    env.pop("SCOPE_TESTING", None)
    env.pop("SCOPE_DECISION_WRITER_SOCKET", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "scope_site.wsgi:application",
                "-c",
                "scope_site/gunicorn_conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            status, body = 0, dict[str, Any]()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    status, body = _post(
                        f"http://127.0.0.1:{port}/api/v1/route", key, {"messages": USER_MESSAGE("hi there")}
                    )
                    break
                except OSError:
                    time.sleep(0.25)
            assert status == 200, (body, log_path.read_text()[-3000:])
            assert DecisionLog.objects.filter(id=body["decision_id"]).count() == 1
            sockets = list((tmp_path / "run").glob("decision-writer-*.sock"))
            assert len(sockets) == 1 and oct(sockets[0].stat().st_mode & 0o777) == "0o600"
        finally:
            server.terminate()
            server.wait(timeout=30)
    text = log_path.read_text()
    assert "decision writer (group commit) on" in text
    assert text.count("models, predictor none (tier prior)") == 2  # each worker warmed before serving
    assert "decision writer stopped: 1 rows in 1 commits" in text  # the answered row went through it
    assert not list((tmp_path / "run").glob("*.sock"))  # the writer removed its socket
