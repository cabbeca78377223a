"""Tamper evidence for the decision log: seal rows into a hash chain of checkpoints, and verify it.

Every row already carries `row_hash` (routing.audit.decision_row_hash, computed when written).
`audit_seal` (a periodic Celery task) takes the rows not yet in a checkpoint, oldest first, and
writes one AuditCheckpoint per batch whose hash covers the batch's row hashes in (created_at, id)
order and the previous checkpoint's hash. Only the sealer takes a lock; the route path never
waits on it (it only inserts rows, which the sealer picks up on a later run).

`audit_verify_*` recompute everything from the stored rows and name the first row or checkpoint
that does not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from routing.audit import HASHED_FIELDS, decision_row_hash
from routing.models import AuditCheckpoint, DecisionLog

GENESIS_HASH = "0" * 64
SEAL_BATCH_ROWS = 2_000  # one UI verification step re-hashes one checkpoint
# A row's created_at is taken just before its (durable, millisecond-long) insert commits; rows
# younger than this may still be uncommitted, so they wait for the next seal.
SEAL_LAG = timedelta(seconds=5)
_SEAL_LOCK_KEY = 0x5C09E_A0D17  # pg_advisory_xact_lock key: one sealer at a time
UNSEALED_COUNT_CAP = 10_000
_UPDATE_CHUNK = 500  # ids per UPDATE … WHERE id IN (…), below SQLite's variable limit


def rows_digest(pairs: Iterable[tuple[Any, str]]) -> str:
    """SHA-256 over "id:row_hash" lines, in the order given (the sealer uses (created_at, id))."""
    digest = hashlib.sha256()
    for row_id, row_hash in pairs:
        digest.update(f"{row_id}:{row_hash}\n".encode())
    return digest.hexdigest()


def checkpoint_hash(
    *, sequence: int, previous_hash: str, rows_digest: str, row_count: int, first: datetime, last: datetime
) -> str:
    text = f"{sequence}|{previous_hash}|{rows_digest}|{row_count}|{first.isoformat()}|{last.isoformat()}"
    return hashlib.sha256(text.encode()).hexdigest()


def _seal_lock() -> None:
    # On SQLite the IMMEDIATE transaction already serialises writers.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SEAL_LOCK_KEY])


def _unsealed(cutoff: datetime, after: tuple[datetime, Any] | None) -> Any:
    qs = DecisionLog.objects.filter(checkpoint__isnull=True, created_at__lte=cutoff)
    if after is not None:
        # Within one run every row up to `cutoff` is committed, so the next batch starts after the
        # previous one; the index scan then skips the entries the previous batches just sealed.
        table = DecisionLog._meta.db_table
        qs = qs.extra(
            where=[f'("{table}"."created_at", "{table}"."id") > (%s, %s)'],
            params=[
                connection.ops.adapt_datetimefield_value(after[0]),
                DecisionLog._meta.pk.get_db_prep_value(after[1], connection),  # type: ignore[union-attr]
            ],
        )
    return qs.order_by("created_at", "id")


def _seal_one(
    *, cutoff: datetime, batch_rows: int, after: tuple[datetime, Any] | None
) -> tuple[AuditCheckpoint, tuple[datetime, Any]] | None:
    with transaction.atomic(durable=True):
        _seal_lock()
        rows = list(_unsealed(cutoff, after).values_list("id", "row_hash", "created_at")[:batch_rows])
        if not rows:
            return None
        last = AuditCheckpoint.objects.order_by("-sequence").first()
        sequence = (last.sequence + 1) if last else 1
        previous = last.checkpoint_hash if last else GENESIS_HASH
        digest = rows_digest((row_id, row_hash) for row_id, row_hash, _ in rows)
        first_at, last_at = rows[0][2], rows[-1][2]
        checkpoint = AuditCheckpoint.objects.create(
            sequence=sequence,
            first_created_at=first_at,
            last_created_at=last_at,
            row_count=len(rows),
            rows_digest=digest,
            previous_hash=previous,
            checkpoint_hash=checkpoint_hash(
                sequence=sequence,
                previous_hash=previous,
                rows_digest=digest,
                row_count=len(rows),
                first=first_at,
                last=last_at,
            ),
        )
        ids = [row_id for row_id, _, _ in rows]
        for start in range(0, len(ids), _UPDATE_CHUNK):
            DecisionLog.objects.filter(id__in=ids[start : start + _UPDATE_CHUNK]).update(
                checkpoint=checkpoint
            )
    return checkpoint, (last_at, rows[-1][0])


def audit_seal(
    *,
    now: datetime | None = None,
    batch_rows: int = SEAL_BATCH_ROWS,
    max_batches: int | None = None,
    lag: timedelta = SEAL_LAG,
    progress: Callable[[int], None] | None = None,
) -> list[AuditCheckpoint]:
    """Seal every unsealed row older than `lag` into checkpoints of at most `batch_rows` rows."""
    cutoff = (now or timezone.now()) - lag
    sealed: list[AuditCheckpoint] = []
    after: tuple[datetime, Any] | None = None  # the first batch of a run also finds late commits
    while max_batches is None or len(sealed) < max_batches:
        result = _seal_one(cutoff=cutoff, batch_rows=batch_rows, after=after)
        if result is None:
            break
        checkpoint, after = result
        sealed.append(checkpoint)
        if progress is not None:
            progress(checkpoint.row_count)
    return sealed


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFailure:
    kind: str  # row | checkpoint
    ref: str  # decision id or checkpoint sequence
    message: str


@dataclass(slots=True)
class AuditReport:
    rows_checked: int = 0
    checkpoints_checked: int = 0
    unsealed_rows: int = 0
    failure: AuditFailure | None = None
    next_sequence: int | None = None  # where a stepwise verification continues; None when done
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None


def _row_failure(values: dict[str, Any]) -> AuditFailure | None:
    expected = decision_row_hash({name: values[name] for name in HASHED_FIELDS}, values["hash_format"])
    if expected != values["row_hash"]:
        return AuditFailure(
            kind="row",
            ref=str(values["id"]),
            message=(
                f"decision {values['id']}: stored row_hash {values['row_hash'][:12]}… does not match "
                f"its content (recomputed {expected[:12]}…): the row was changed after it was written"
            ),
        )
    unhashed = _unhashed_mismatch(values)
    if unhashed:
        return AuditFailure(kind="row", ref=str(values["id"]), message=f"decision {values['id']}: {unhashed}")
    return None


# quality and cost are rounded in the candidates (Candidate.as_dict): 4 and 8 decimals
_PREDICTED = (("predicted_quality", "quality", 5e-5), ("predicted_cost_usd", "cost_usd", 5e-9))


def _unhashed_mismatch(values: Mapping[str, Any]) -> str:
    """Columns the row hash covers only through another field must agree with it: the prompt with
    prompt_sha256, the predicted cost and quality columns with the chosen candidate's predictions."""
    prompt = values["prompt"]
    if prompt and hashlib.sha256(prompt.encode()).hexdigest() != values["prompt_sha256"]:
        return "its prompt does not match the prompt_sha256 the row hash covers: the prompt was changed"
    chosen = next(
        (
            c
            for c in values["candidates"] or ()
            if c.get("model") == values["chosen_model"] and c.get("rank") == 1
        ),
        None,
    )
    logged = (chosen or {}).get("predictions") or {}
    for column, key, tolerance in _PREDICTED:
        stored, hashed = values[column], logged.get(key)
        if stored is None and hashed is None:
            continue
        if stored is None or hashed is None or abs(float(stored) - float(hashed)) > tolerance:
            return (
                f"its {column} ({stored}) differs from the chosen candidate's {key} ({hashed}) that the "
                "row hash covers: the column was changed"
            )
    return ""


def _rows(queryset: Any) -> Iterator[dict[str, Any]]:
    unhashed = ("row_hash", "hash_format", "prompt", "predicted_quality", "predicted_cost_usd")
    return queryset.order_by("created_at", "id").values(*HASHED_FIELDS, *unhashed).iterator(chunk_size=2000)


def audit_verify_checkpoint(
    checkpoint: AuditCheckpoint, previous: AuditCheckpoint | None
) -> tuple[int, AuditFailure | None]:
    """Verify one checkpoint: its link to `previous`, its own hash, and every row sealed in it."""
    seq = checkpoint.sequence
    expected_previous = previous.checkpoint_hash if previous else GENESIS_HASH
    if previous is None and seq != 1:
        return 0, AuditFailure(
            "checkpoint", str(seq), f"checkpoint 1 … {seq - 1} missing: the chain starts at {seq}"
        )
    if previous is not None and previous.sequence != seq - 1:
        return 0, AuditFailure(
            "checkpoint", str(seq), f"checkpoint {previous.sequence + 1} missing before {seq}"
        )
    if checkpoint.previous_hash != expected_previous:
        return 0, AuditFailure(
            "checkpoint",
            str(seq),
            f"checkpoint {seq}: previous_hash does not match checkpoint {seq - 1}'s hash",
        )
    recomputed = checkpoint_hash(
        sequence=seq,
        previous_hash=checkpoint.previous_hash,
        rows_digest=checkpoint.rows_digest,
        row_count=checkpoint.row_count,
        first=checkpoint.first_created_at,
        last=checkpoint.last_created_at,
    )
    if recomputed != checkpoint.checkpoint_hash:
        return 0, AuditFailure(
            "checkpoint", str(seq), f"checkpoint {seq}: its hash does not match its fields"
        )
    digest = hashlib.sha256()
    count = 0
    for values in _rows(DecisionLog.objects.filter(checkpoint=checkpoint)):
        failure = _row_failure(values)
        if failure is not None:
            return count, failure
        digest.update(f"{values['id']}:{values['row_hash']}\n".encode())
        count += 1
    if count != checkpoint.row_count or digest.hexdigest() != checkpoint.rows_digest:
        return count, AuditFailure(
            "checkpoint",
            str(seq),
            f"checkpoint {seq}: sealed {checkpoint.row_count} rows, {count} found, and their hashes do not "
            "match the sealed digest (a row was deleted, added or had its row_hash rewritten)",
        )
    return count, None


def audit_verify_step(*, after_sequence: int = 0, max_rows: int = SEAL_BATCH_ROWS) -> AuditReport:
    """Verify checkpoints after `after_sequence` until about `max_rows` rows were checked.

    The UI calls this repeatedly (each request bounded in time) and shows progress; when the
    checkpoints are done it verifies the unsealed rows too.
    """
    report = AuditReport()
    previous = (
        AuditCheckpoint.objects.filter(sequence__lte=after_sequence).order_by("-sequence").first()
        if after_sequence
        else None
    )
    for checkpoint in (
        AuditCheckpoint.objects.filter(sequence__gt=after_sequence).order_by("sequence").iterator()
    ):
        rows, failure = audit_verify_checkpoint(checkpoint, previous)
        report.rows_checked += rows
        report.checkpoints_checked += 1
        if failure is not None:
            report.failure = failure
            return report
        previous = checkpoint
        if report.rows_checked >= max_rows:
            report.next_sequence = checkpoint.sequence
            return report
    for values in _rows(DecisionLog.objects.filter(checkpoint__isnull=True)):
        failure = _row_failure(values)
        report.unsealed_rows += 1
        report.rows_checked += 1
        if failure is not None:
            report.failure = failure
            return report
    return report


def audit_verify(*, progress: Callable[[int], None] | None = None) -> AuditReport:
    """Verify the whole log: every checkpoint in order, every row, then the unsealed rows."""
    total = AuditReport()
    after = 0
    while True:
        step = audit_verify_step(after_sequence=after)
        total.rows_checked += step.rows_checked
        total.checkpoints_checked += step.checkpoints_checked
        total.unsealed_rows += step.unsealed_rows
        if progress is not None:
            progress(step.rows_checked)
        if step.failure is not None or step.next_sequence is None:
            total.failure = step.failure
            return total
        after = step.next_sequence


@dataclass(frozen=True, slots=True)
class AuditStatus:
    checkpoints: int
    last: AuditCheckpoint | None
    unsealed_estimate: int


def audit_status() -> AuditStatus:
    """Cheap summary for the audit page (the unsealed count uses the small partial index)."""
    last = AuditCheckpoint.objects.order_by("-sequence").first()
    # bounded: normally a minute of traffic; after an outage the page says "more than …"
    unsealed = DecisionLog.objects.filter(checkpoint__isnull=True)[: UNSEALED_COUNT_CAP + 1].count()
    return AuditStatus(checkpoints=last.sequence if last else 0, last=last, unsealed_estimate=unsealed)
