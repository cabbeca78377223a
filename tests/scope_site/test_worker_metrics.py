"""Celery task metrics: served by a real prefork worker's own port, and in process for eager runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from routing.periodic_tasks import experiment_stats_refresh_task, experiments_refresh_all_task
from scope_site.metrics import metrics_render
from tests.celery_worker import run_celery_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _task_counts(text: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "scope_celery_tasks":
            for sample in family.samples:
                if sample.name == "scope_celery_tasks_total":
                    key = (sample.labels["task"], sample.labels["state"])
                    counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def _scrape(port: int) -> dict[tuple[str, str], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return _task_counts(response.read().decode())
    except urllib.error.URLError:  # not listening yet
        return {}


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_prefork_worker_serves_the_sum_of_its_children_task_metrics() -> None:
    port = _free_port()
    env = {"SCOPE_WORKER_METRICS_PORT": str(port)}
    with run_celery_worker(env=env, pool="prefork", concurrency=2) as worker:
        for _ in range(6):
            experiments_refresh_all_task.delay()
        experiment_stats_refresh_task.delay(987654)  # no such experiment: the task fails
        ok, failed = (
            ("routing.experiments_refresh_all", "SUCCESS"),
            ("routing.experiment_stats_refresh", "FAILURE"),
        )
        counts = worker.wait_for(
            lambda: (c := _scrape(port)).get(ok) == 6 and c.get(failed) == 1 and c, timeout=60
        )
        assert counts[ok] == 6 and counts[failed] == 1
        # both children ran tasks (6 quick ones over 2 processes), yet one scrape sums them
        assert sum(1 for line in worker.output if "ForkPoolWorker-" in line and "succeeded" in line) == 6


@pytest.mark.django_db
def test_tasks_run_in_process_count_in_the_web_metrics(catalog: Any) -> None:
    key = ("routing.experiments_refresh_all", "SUCCESS")
    before = _task_counts(metrics_render(multiproc_dir="").decode()).get(key, 0.0)
    experiments_refresh_all_task.apply()
    assert _task_counts(metrics_render(multiproc_dir="").decode()).get(key, 0.0) == before + 1
    assert "scope_celery_task_seconds_bucket" in metrics_render(multiproc_dir="").decode()


def _run_without_broker(command: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`command` from the project root with neither DATABASE_URL nor REDIS_URL set."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(extra_env)
    return subprocess.run(
        command,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_worker_without_redis_url_refuses_to_start_instead_of_waiting_forever(tmp_path: Any) -> None:
    result = _run_without_broker(
        [sys.executable, "-m", "celery", "-A", "scope_site.worker", "worker", "--concurrency", "1"],
        SCOPE_VAR_DIR=str(tmp_path),
        SCOPE_WORKER_METRICS_PORT="0",
    )
    assert result.returncode != 0
    assert "a Celery worker needs REDIS_URL" in result.stderr + result.stdout


def _make_beat_command() -> list[str]:
    """The command `make beat` runs, with this interpreter's celery."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text().splitlines()
    recipe = makefile[makefile.index("beat: install") + 1].split()
    assert recipe[0] == "$(VENV)/bin/celery"
    return [sys.executable, "-m", "celery", *recipe[1:]]


def test_make_beat_without_redis_url_refuses_to_start_instead_of_running_tasks_twice(tmp_path: Any) -> None:
    # without a broker the app is eager: this beat would run each due task itself, beside make run's
    result = _run_without_broker(
        _make_beat_command(), SCOPE_VAR_DIR=str(tmp_path), SCOPE_SQLITE_PATH=str(tmp_path / "scope.sqlite3")
    )
    assert result.returncode != 0
    assert "Celery beat needs REDIS_URL" in result.stderr + result.stdout
