"""Async jobs: submission, idempotency, claiming, retries and ownership (service level, any broker)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from feedback.models import Outcome
from providers.models import LLMModel
from routing.models import DecisionLog, Job, SpendLedger
from routing.selectors import catalog_invalidate
from routing.services.jobs import job_claim, job_run, jobs_requeue_stale
from tests.conftest import USER_MESSAGE, requires_postgres
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db
Api = Callable[..., Any]
BODY = {"model": "scope/auto", "messages": USER_MESSAGE("Summarise the plot of Hamlet in one line.")}


@pytest.fixture(autouse=True)
def _fast_simulation(settings: Any) -> None:
    settings.SCOPE_SIMULATED_SPEEDUP = 1000.0
    settings.SCOPE_RETRY_BACKOFF_S = 0.0


def submit(api: Api, body: Any = BODY, **headers: Any) -> Any:
    return api("/api/v1/jobs", body, **headers)


def get(key: str, job_id: str) -> Any:
    return Client().get(f"/api/v1/jobs/{job_id}", HTTP_AUTHORIZATION=f"Bearer {key}")


def test_a_submitted_job_is_accepted_then_enqueued_once_committed(
    api: Api, api_key: str, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = submit(api)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["object"] == "scope.job" and body["result"] is None
    assert response["Location"] == f"/api/v1/jobs/{body['id']}"
    assert len(callbacks) == 1  # the message goes out only after the row is committed
    assert get(api_key, body["id"]).json()["status"] == "queued"


def test_a_job_runs_once_and_its_result_is_polled_by_its_own_key_only(api: Api, api_key: str) -> None:
    job_id = submit(api).json()["id"]
    run = job_run(job_id=job_id, worker="w1")
    assert (run.claimed, run.status) == (True, "succeeded")
    polled = get(api_key, job_id).json()
    assert polled["status"] == "succeeded" and polled["attempts"] == 1
    assert polled["result"]["object"] == "chat.completion"
    assert polled["result"]["choices"][0]["message"]["content"]
    decision = DecisionLog.objects.get(pk=polled["decision_id"])
    assert decision.kind == "job" and decision.chosen_model == polled["result"]["model"]
    assert Outcome.objects.filter(decision_id=decision.pk).count() == 1
    # a second delivery of the message changes nothing
    assert job_run(job_id=job_id, worker="w2").claimed is False
    assert DecisionLog.objects.filter(kind="job").count() == 1
    _, other_key = make_api_key("other")
    assert get(other_key, job_id).status_code == 404
    assert get(api_key, str(uuid.uuid4())).status_code == 404


def test_the_same_idempotency_key_returns_the_same_job_and_never_enqueues_twice(
    api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = submit(api, HTTP_IDEMPOTENCY_KEY="order-42")
        again = submit(api, HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Job.objects.count() == 1 and len(callbacks) == 1


def test_an_idempotency_key_reused_with_another_body_is_a_409(api: Api) -> None:
    submit(api, HTTP_IDEMPOTENCY_KEY="k1")
    response = submit(api, {**BODY, "temperature": 0.1}, HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"


def test_redacted_storage_keeps_only_the_hash_of_an_ended_jobs_request(
    api: Api, api_key: str, settings: Any
) -> None:
    settings.SCOPE_PROMPT_STORAGE = "redacted"
    secret = {**BODY, "messages": USER_MESSAGE("TOPSECRET-JOB-PROMPT: what is 2 + 2?")}
    job_id = submit(api, secret, HTTP_IDEMPOTENCY_KEY="r1").json()["id"]
    assert "TOPSECRET" in str(Job.objects.get(pk=job_id).body)  # queued: the worker needs it
    assert job_run(job_id=job_id, worker="w1").status == "succeeded"
    job = Job.objects.get(pk=job_id)
    assert "TOPSECRET" not in str(job.body) and job.body["redacted"] is True
    assert get(api_key, job_id).json()["result"]["choices"]  # the answer is still there to fetch
    # the Idempotency-Key still tells the same request from another one
    assert submit(api, secret, HTTP_IDEMPOTENCY_KEY="r1").json()["id"] == job_id
    assert submit(api, BODY, HTTP_IDEMPOTENCY_KEY="r1").status_code == 409
    # a job that ran out of attempts ends redacted too
    settings.SCOPE_JOB_MAX_ATTEMPTS = 1
    stuck = submit(api, secret).json()["id"]
    assert job_claim(job_id=stuck, worker="dead-worker")
    Job.objects.filter(pk=stuck).update(started_at=timezone.now() - dt.timedelta(hours=1))
    job_run(job_id=stuck, worker="late")
    ended = Job.objects.get(pk=stuck)
    assert ended.status == "failed" and "TOPSECRET" not in str(ended.body)


def test_idempotency_keys_are_per_api_key(api: Api, catalog: Any) -> None:
    _, second_key = make_api_key("second")
    one = submit(api, HTTP_IDEMPOTENCY_KEY="same").json()["id"]
    two = api("/api/v1/jobs", BODY, key=second_key, HTTP_IDEMPOTENCY_KEY="same").json()["id"]
    assert one != two


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "scope/auto"}, "messages"),
        ({"model": "scope/auto", "messages": USER_MESSAGE("hi"), "stream": True}, "stream is not supported"),
        ({"model": "scope/auto", "messages": USER_MESSAGE("hi"), "temperature": "hot"}, "temperature"),
        ([1, 2, 3], ""),
        ("{not json", ""),
    ],
)
def test_bad_submissions_are_refused_before_any_job_exists(api: Api, body: Any, fragment: str) -> None:
    response = submit(api, body)
    assert response.status_code == 400, response.content
    assert fragment in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_submissions_need_an_api_key(api: Api) -> None:
    assert submit(api, BODY, key=None).status_code == 401


def test_a_job_left_running_by_a_dead_worker_is_claimed_again_once_stale(api: Api, settings: Any) -> None:
    job_id = submit(api).json()["id"]
    assert job_claim(job_id=job_id, worker="dead-worker")
    assert job_run(job_id=job_id, worker="eager-redelivery").claimed is False  # still fresh: not stolen
    Job.objects.filter(pk=job_id).update(started_at=timezone.now() - dt.timedelta(hours=1))
    run = job_run(job_id=job_id, worker="survivor")
    assert (run.claimed, run.status) == (True, "succeeded")
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 2 and job.claimed_by == "survivor"


def test_a_stale_job_out_of_attempts_fails_instead_of_hanging(api: Api, settings: Any) -> None:
    settings.SCOPE_JOB_MAX_ATTEMPTS = 1
    job_id = submit(api).json()["id"]
    assert job_claim(job_id=job_id, worker="dead-worker")
    Job.objects.filter(pk=job_id).update(started_at=timezone.now() - dt.timedelta(hours=1))
    assert job_run(job_id=job_id, worker="late").claimed is False
    job = Job.objects.get(pk=job_id)
    assert job.status == "failed" and (job.error or {})["code"] == "attempts_exhausted"


def test_transient_failures_are_retried_a_bounded_number_of_times(api: Api, settings: Any) -> None:
    settings.SCOPE_JOB_MAX_ATTEMPTS = 3
    LLMModel.objects.update(sim_profile={"failure_rate": 1.0})  # every model answers 503
    job_id = submit(api).json()["id"]
    waits = []
    for _ in range(3):
        run = job_run(job_id=job_id, worker="w")
        waits.append(run.retry_in_s)
        Job.objects.filter(pk=job_id).update(not_before=timezone.now())  # the wait has passed
    assert waits[:2] == [5.0, 10.0] and waits[2] is None  # backoff, then give up
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.attempts) == ("failed", 3)
    assert (job.error or {})["code"] == "all_models_failed" and job.decision_id is not None
    assert job_run(job_id=job_id, worker="w").claimed is False


def test_a_domain_error_fails_the_job_at_once(api: Api) -> None:
    job_id = submit(api, {**BODY, "model": "small"}).json()["id"]
    LLMModel.objects.filter(name="small").update(enabled=False)  # disabled before a worker ran it
    catalog_invalidate()
    run = job_run(job_id=job_id, worker="w")
    assert (run.status, run.retry_in_s) == ("failed", None)
    assert (Job.objects.get(pk=job_id).error or {})["code"] == "model_not_found"


def test_a_budget_refusal_is_retried_after_its_retry_after(catalog: Any) -> None:
    from decimal import Decimal

    key, plain = make_api_key("spent", daily_budget_usd=Decimal("1"))
    SpendLedger.objects.create(
        api_key=key, period="day", period_start=timezone.now().date(), spent_usd=Decimal("1")
    )
    response = Client().post(
        "/api/v1/jobs", BODY, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {plain}"
    )
    run = job_run(job_id=response.json()["id"], worker="w")
    assert run.status == "queued" and run.retry_in_s is not None and 60 < run.retry_in_s <= 600
    assert (Job.objects.get(pk=response.json()["id"]).error or {})["code"] == "budget_exceeded"


def test_a_job_that_needs_more_than_the_whole_budget_fails_at_once(catalog: Any) -> None:
    from decimal import Decimal

    _, plain = make_api_key("broke", daily_budget_usd=Decimal("0"))
    response = Client().post(
        "/api/v1/jobs", BODY, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {plain}"
    )
    assert job_run(job_id=response.json()["id"], worker="w").status == "failed"
    job = Job.objects.get(pk=response.json()["id"])
    error = job.error or {}
    assert error["code"] == "budget_too_small" and "cannot run under this budget" in error["message"]
    assert job.decision_id is not None  # the refused decision, with its "refused" outcome


def test_the_sweep_requeues_lost_and_stale_jobs(api: Api) -> None:
    lost, stale, fresh = (submit(api).json()["id"] for _ in range(3))
    Job.objects.filter(pk=lost).update(created_at=timezone.now() - dt.timedelta(hours=1))
    job_claim(job_id=stale, worker="dead")
    Job.objects.filter(pk=stale).update(started_at=timezone.now() - dt.timedelta(hours=1))
    enqueued: list[Any] = []
    assert jobs_requeue_stale(enqueue=enqueued.append) == 2
    assert {str(i) for i in enqueued} == {lost, stale}


def test_a_retry_waits_its_turn_whatever_message_comes_early(api: Api, settings: Any) -> None:
    LLMModel.objects.update(sim_profile={"failure_rate": 1.0})  # every model answers 503
    job_id = submit(api).json()["id"]
    Job.objects.filter(pk=job_id).update(created_at=timezone.now() - dt.timedelta(hours=1))  # an old job
    assert job_run(job_id=job_id, worker="w").retry_in_s == 5.0
    # a duplicate or a sweep's message arriving before the wait is over claims nothing
    assert job_run(job_id=job_id, worker="early").claimed is False
    enqueued: list[Any] = []
    assert jobs_requeue_stale(enqueue=enqueued.append) == 0  # its retry is scheduled, not lost
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.attempts) == ("queued", 1)
    # long past its start and still queued: its message was lost, the sweep sends another
    Job.objects.filter(pk=job_id).update(not_before=timezone.now() - dt.timedelta(hours=1))
    assert jobs_requeue_stale(enqueue=enqueued.append) == 1
    assert job_run(job_id=job_id, worker="w").claimed is True


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_racing_claims_let_exactly_one_worker_run_a_job(catalog: Any) -> None:
    key, _ = make_api_key("race")
    job = Job.objects.create(api_key=key, body=BODY)
    start = threading.Barrier(8)
    wins: list[bool] = []

    def claim(n: int) -> None:
        start.wait()
        wins.append(job_claim(job_id=job.id, worker=f"w{n}"))
        connection.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(wins) == [False] * 7 + [True]


def test_the_rpm_limit_counts_a_job_once_at_submission(catalog: Any) -> None:
    _, plain = make_api_key("rpm-jobs", rpm_limit=2)

    def post() -> Any:
        return Client().post(
            "/api/v1/jobs", BODY, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {plain}"
        )

    ids = [post().json()["id"] for _ in range(2)]
    assert [job_run(job_id=i, worker="w").status for i in ids] == ["succeeded", "succeeded"]
    refused = post()
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1


def test_embedded_mode_runs_the_job_in_process_when_it_is_committed(
    api: Api, api_key: str, django_capture_on_commit_callbacks: Any
) -> None:
    from scope_site.celery import app

    was_eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # what the settings choose without REDIS_URL
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = submit(api)
    finally:
        app.conf.task_always_eager = was_eager
    polled = get(api_key, response.json()["id"]).json()
    assert polled["status"] == "succeeded" and polled["result"]["object"] == "chat.completion"


def test_a_chat_that_needs_more_than_the_whole_budget_says_no_wait_helps(catalog: Any) -> None:
    from decimal import Decimal

    _, plain = make_api_key("tiny", daily_budget_usd=Decimal("0"))
    response = Client().post(
        "/v1/chat/completions",
        {"model": "scope/auto", "messages": [{"role": "user", "content": "Summarise the plan"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plain}",
    )
    assert response.status_code == 429 and response.json()["error"]["code"] == "budget_too_small"
    assert "Retry-After" not in response  # the budget resets to the same amount: no wait makes it fit


@pytest.mark.parametrize(
    ("model", "code"), [("no-such-model", "model_not_found"), ("scope/no-such-policy", "unknown_policy")]
)
def test_a_job_for_an_unknown_model_or_policy_is_a_404_at_submission(
    catalog: Any, api_key: str, model: str, code: str
) -> None:
    body = {"model": model, "messages": USER_MESSAGE("Summarise the plan")}
    response = Client().post(
        "/api/v1/jobs", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == code, response.json()
    assert not Job.objects.exists()
