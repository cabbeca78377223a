"""Async chat completions: a Job row is the record, a Celery message only the trigger.

* `job_create` validates the body now (bad input is a 400 at submission, not a failed job), stores
  the row and enqueues on commit. The same Idempotency-Key from the same API key returns the
  existing job (a unique constraint decides races), so a retried submission never runs twice.
* `job_run` claims the job with one conditional UPDATE (queued → running, or running but stale
  → running again), so two deliveries of the message cannot both run it; only the claimant may
  store the result. A worker that died mid-job leaves it `running`; after SCOPE_JOB_STALE_AFTER_S
  it can be claimed again (by a redelivered message or by `jobs_requeue_stale`).
* Transient failures (every model failed, rate/budget limit, an unexpected error) put the job
  back to `queued` for a bounded number of attempts with backoff; domain errors (bad request,
  unknown model or policy, no eligible model) fail it at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from providers.chat_request import chat_body_parse
from providers.decisions import chat_target_check
from routing.models import ApiKey, DecisionKind, Job, JobStatus
from routing.storable import UNSTORABLE_TEXT, unstorable_path
from scope_site.errors import (
    ApplicationError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from scope_site.renderers import api_time

logger = logging.getLogger(__name__)
_MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True, slots=True)
class JobSubmission:
    job: Job
    created: bool  # False: an earlier submission with the same Idempotency-Key


def _enqueue(job_id: uuid.UUID, countdown: float = 0) -> None:
    from routing.tasks import job_execute  # the task module imports this one

    try:
        job_execute.apply_async(args=[str(job_id)], countdown=countdown)
    except kombu.exceptions.OperationalError as exc:
        # The broker (Redis) is down. The job row is committed and stays queued: the stale-job
        # sweep (jobs_requeue_stale, a beat task) enqueues it again once the broker is back.
        logger.warning("broker unavailable, job %s stays queued for the stale-job sweep: %s", job_id, exc)


def job_create(*, api_key: ApiKey, body: Any, idempotency_key: str = "") -> JobSubmission:
    """Store a job for `body` (a chat-completions request) and enqueue it once committed."""
    idempotency_key = idempotency_key.strip()
    if len(idempotency_key) > _MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be at most {_MAX_IDEMPOTENCY_KEY} characters")
    parsed = chat_body_parse(body)  # InvalidRequest (400) names the bad parameter
    # neither the stored body nor, later, the decision row could hold it
    for name, value in body.items():  # a dict: chat_body_parse refuses anything else
        unstorable = unstorable_path(name, "body") or unstorable_path(value, name)
        if unstorable:
            raise InvalidRequest(f"{unstorable}: {UNSTORABLE_TEXT}")
    if parsed.stream:
        raise InvalidRequest(
            "stream is not supported for async jobs; poll GET /api/v1/jobs/<id>", code="invalid_value"
        )
    chat_target_check(api_key=api_key, parsed=parsed)  # an unknown model or policy: 404 now
    if idempotency_key:
        existing = Job.objects.filter(api_key=api_key, idempotency_key=idempotency_key).first()
        if existing is not None:
            return JobSubmission(job=_same_body(existing, body), created=False)
    try:
        with transaction.atomic():
            job = Job.objects.create(api_key=api_key, idempotency_key=idempotency_key, body=body)
            transaction.on_commit(lambda: _enqueue(job.id))
    except IntegrityError:
        # a concurrent submission with the same key won the unique constraint
        existing = Job.objects.filter(api_key=api_key, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return JobSubmission(job=_same_body(existing, body), created=False)
    job.refresh_from_db()  # embedded (eager Celery): the job already ran when the commit enqueued it
    return JobSubmission(job=job, created=True)


def _same_body(job: Job, body: Any) -> Job:
    stored = job.body
    if isinstance(stored, dict) and stored.get("redacted") is True:  # an ended job under redacted storage
        same = stored.get("sha256") == _sha256(body)
    else:
        same = _canonical(stored) == _canonical(body)
    if not same:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body; use a new key.",
            code="idempotency_key_reused",
            extra={"job_id": str(job.id)},
        )
    return job


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _sha256(body: Any) -> str:
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _ended(body: Any) -> dict[str, Any]:
    """What an ended job keeps of its request: all of it, or under SCOPE_PROMPT_STORAGE=redacted
    only its hash (the Idempotency-Key check compares against it). A queued or running job needs
    the whole body to run; the answer stays in `result` for the client to fetch."""
    if settings.SCOPE_PROMPT_STORAGE != "redacted":
        return {}
    return {"body": {"redacted": True, "sha256": _sha256(body)}}


def job_get(*, api_key: ApiKey, job_id: uuid.UUID) -> Job:
    """The job, only for the key that created it (others get the same 404 as for a missing id)."""
    job = Job.objects.filter(pk=job_id, api_key=api_key).first()
    if job is None:
        raise NotFound(f"No job {job_id} for this API key", code="job_not_found")
    return job


def job_payload(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "object": "scope.job",
        "status": job.status,
        "created_at": api_time(job.created_at),
        "started_at": api_time(job.started_at) if job.started_at else None,
        "finished_at": api_time(job.finished_at) if job.finished_at else None,
        "attempts": job.attempts,
        "decision_id": str(job.decision_id) if job.decision_id else None,
        "idempotency_key": job.idempotency_key or None,
        "result": job.result,
        "error": job.error,
    }


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRun:
    """What a run did: `claimed` False when another worker has (or had) it; `retry_in_s` to run again."""

    claimed: bool
    status: str
    retry_in_s: float | None = None


def _stale_before(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=settings.SCOPE_JOB_STALE_AFTER_S)


def job_claim(*, job_id: uuid.UUID | str, worker: str) -> bool:
    """Claim the job for `worker` with one conditional UPDATE; False if it is not claimable."""
    now = timezone.now()
    due = Q(not_before__isnull=True) | Q(not_before__lte=now)
    claimable = Q(status=JobStatus.QUEUED) & due | Q(
        status=JobStatus.RUNNING, started_at__lt=_stale_before(now)
    )
    updated = (
        Job.objects.filter(claimable, pk=job_id)
        .filter(attempts__lt=settings.SCOPE_JOB_MAX_ATTEMPTS)
        .update(status=JobStatus.RUNNING, started_at=now, claimed_by=worker[:200], attempts=F("attempts") + 1)
    )
    if not updated:
        _fail_if_out_of_attempts(job_id, now)
    return bool(updated)


def _fail_if_out_of_attempts(job_id: uuid.UUID | str, now: dt.datetime) -> None:
    """A job whose attempts are used up (last one died mid-run) ends as failed instead of hanging."""
    claimable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, started_at__lt=_stale_before(now))
    exhausted = Job.objects.filter(claimable, pk=job_id, attempts__gte=settings.SCOPE_JOB_MAX_ATTEMPTS)
    for body in exhausted.values_list("body", flat=True)[:1]:
        exhausted.update(
            status=JobStatus.FAILED,
            finished_at=now,
            error={"code": "attempts_exhausted", "message": "the job's worker stopped on every attempt"},
            **_ended(body),
        )


def _store(job_id: uuid.UUID | str, worker: str, **values: Any) -> bool:
    """Write the run's end, only if this worker still holds the claim."""
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, claimed_by=worker[:200]).update(**values)
    )


def _retry_wait(exc: BaseException, attempts: int) -> float:
    # capped: a long countdown would outlive the broker's visibility timeout, and an exhausted
    # daily budget should fail the job (with the reset time in its error) rather than park it
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return float(min(exc.retry_after, 600))
    return min(300.0, 5.0 * 2 ** (attempts - 1))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RateLimited) and exc.code == "budget_too_small":
        return False  # the request alone exceeds the whole budget: retrying cannot help
    return isinstance(exc, RateLimited | ServiceUnavailable) or not isinstance(exc, ApplicationError)


def _error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ApplicationError):
        return {"code": exc.code, "message": exc.message, "status": exc.http_status, **_jsonable(exc.extra)}
    return {"code": "internal_error", "message": f"{type(exc).__name__} while running the job", "status": 500}


def _jsonable(extra: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(extra), default=str))


def job_run(*, job_id: uuid.UUID | str, worker: str) -> JobRun:
    """Claim and run one job; safe to call any number of times for the same id."""
    from providers.execution import chat_complete  # execution imports routing services

    if not job_claim(job_id=job_id, worker=worker):
        status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        return JobRun(claimed=False, status=status or "missing")
    job = Job.objects.select_related("api_key").get(pk=job_id)
    try:
        result = chat_complete(api_key=job.api_key, body=job.body, kind=DecisionKind.JOB)
    except Exception as exc:
        now = timezone.now()
        if not isinstance(exc, ApplicationError):
            logger.exception("job %s: unexpected error on attempt %s", job_id, job.attempts)
        decision_id = exc.extra.get("decision_id") if isinstance(exc, ApplicationError) else None
        if _transient(exc) and job.attempts < settings.SCOPE_JOB_MAX_ATTEMPTS:
            wait = _retry_wait(exc, job.attempts)
            _store(
                job_id,
                worker,
                status=JobStatus.QUEUED,
                error=_error_body(exc),
                claimed_by="",
                not_before=now + dt.timedelta(seconds=wait),
            )
            return JobRun(claimed=True, status=JobStatus.QUEUED, retry_in_s=wait)
        _store(
            job_id,
            worker,
            status=JobStatus.FAILED,
            error=_error_body(exc),
            finished_at=now,
            decision_id=decision_id,
            **_ended(job.body),
        )
        return JobRun(claimed=True, status=JobStatus.FAILED)
    body = result.body
    if len(_canonical(body)) > settings.SCOPE_JOB_RESULT_MAX_BYTES:
        stored = _store(
            job_id,
            worker,
            status=JobStatus.FAILED,
            finished_at=timezone.now(),
            decision_id=result.decision_id,
            error={"code": "result_too_large", "message": "the answer exceeds SCOPE_JOB_RESULT_MAX_BYTES"},
            **_ended(job.body),
        )
        return JobRun(claimed=stored, status=JobStatus.FAILED)
    stored = _store(
        job_id,
        worker,
        status=JobStatus.SUCCEEDED,
        result=body,
        error=None,
        finished_at=timezone.now(),
        decision_id=result.decision_id,
        **_ended(job.body),
    )
    if not stored:
        logger.warning(
            "job %s: finished after its claim was taken over; result of %s dropped", job_id, worker
        )
    return JobRun(claimed=stored, status=JobStatus.SUCCEEDED if stored else JobStatus.RUNNING)


def jobs_requeue_stale(
    *,
    queued_older_than_s: float = 300.0,
    limit: int = 500,
    enqueue: Callable[[uuid.UUID], None] | None = None,
) -> int:
    """Enqueue again the jobs whose message may be lost: queued for long (a retry: long past its
    scheduled start), or running past the stale timeout."""
    now = timezone.now()
    cutoff = now - dt.timedelta(seconds=queued_older_than_s)
    ids = list(
        Job.objects.filter(
            Q(status=JobStatus.QUEUED, not_before__isnull=True, created_at__lt=cutoff)
            | Q(status=JobStatus.QUEUED, not_before__lt=cutoff)
            | Q(status=JobStatus.RUNNING, started_at__lt=_stale_before(now))
        )
        .order_by("created_at")
        .values_list("id", flat=True)[:limit]
    )
    for job_id in ids:
        (enqueue or _enqueue)(job_id)
    return len(ids)
