"""The only writer of DecisionLog rows (append-only)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections, router, transaction
from django.db.models import Field
from django.db.models.base import ModelState
from django.utils import timezone

from routing.audit import HASH_FORMAT_JSON, decision_row_hash_texts
from routing.engine.types import Decision, PolicySpec
from routing.features import RequestFeatures
from routing.models import ApiKey, DecisionKind, DecisionLog
from routing.services.decision_copy import decision_copy_values_line
from routing.services.decision_writer import (
    DATABASE_UNAVAILABLE,
    DatabaseUnavailable,
    ProcessGroupCommit,
    WriterClient,
    process_group_commit_for_default_database,
)
from routing.storable import UNSTORABLE_TEXT, storable_utf8, unstorable_path
from scope_site.errors import InvalidRequest
from scope_site.green import gevent_patched


def decision_log_write(
    *,
    decision: Decision,
    features: RequestFeatures,
    policy: PolicySpec,
    api_key: ApiKey | None,
    user: str = "",
    metadata: Mapping[str, Any] | None = None,
    kind: str = DecisionKind.ROUTE,
    experiment: str = "",
    arm: str = "",
    cache_hit: bool = False,
) -> DecisionLog:
    # PostgreSQL text and jsonb cannot hold a NUL, nor UTF-8 a lone surrogate: no row for such a request
    prompt_utf8 = storable_utf8(features.text)  # encoded once: checked here, hashed below
    unstorable = unstorable_path(metadata or {}, "metadata") or unstorable_path(user, "user")
    if prompt_utf8 is None or unstorable:
        where = "messages" if prompt_utf8 is None else unstorable
        raise InvalidRequest(f"{where}: {UNSTORABLE_TEXT}", code="invalid_request")
    redacted = settings.SCOPE_PROMPT_STORAGE == "redacted"
    # the row's values by attname: hashed, encoded as a COPY line and held by the returned row from
    # this one dict
    values: dict[str, Any] = {
        "id": time_ordered_uuid(),
        "created_at": timezone.now(),
        "kind": kind,
        "api_key_id": api_key.pk if api_key else None,
        "api_key_name": api_key.name if api_key else "",
        **decision_fields(decision=decision, features=features, policy=policy, redacted=redacted),
        "prompt_sha256": hashlib.sha256(prompt_utf8).hexdigest(),
        "user": user,
        "metadata": dict(metadata or {}),
        "experiment": experiment,
        "arm": arm,
        "cache_hit": cache_hit,
        "row_hash": "",
        "hash_format": HASH_FORMAT_JSON,
        "checkpoint_id": None,
    }
    values["hash_format"], values["row_hash"], json_utf8, jsonb_values = decision_row_hash_texts(values)
    values.update(jsonb_values)  # a -0.0 in SCOPE's own numbers: the row holds what was hashed
    row = _decision_row(values, api_key)
    # durable: the row is committed before the caller answers the request
    _insert_durably(row, lambda: decision_copy_values_line(values, json_utf8))
    return row


def decision_fields(
    *, decision: Decision, features: RequestFeatures, policy: PolicySpec, redacted: bool
) -> dict[str, Any]:
    """A decision row's values that follow from the decision, its request's features and policy
    (DecisionLog attnames); the live path and the dashboard's synthetic history both use them."""
    chosen = decision.chosen
    prediction = chosen.prediction if chosen else None
    return {
        "policy_slug": policy.slug,
        "policy_version": policy.version,
        "strategy": decision.strategy,
        "predictor_version": decision.predictor_version,
        "alpha": decision.alpha,
        "chosen_model": decision.model.name if decision.model else "",
        "chosen_provider": decision.model.provider if decision.model else "",
        "fallbacks": list(decision.fallbacks),
        "candidates": [c.as_dict() for c in decision.candidates],
        "explanation": dict(decision.explanation),
        # a stored prompt stands for its n-grams; a redacted row keeps them (RequestFeatures.as_dict)
        "features": features.as_dict(ngrams=redacted),
        "feature_schema": features.schema_version,
        "prompt": "" if redacted else features.text,
        "predicted_cost_usd": chosen.cost_usd if chosen else None,
        "predicted_quality": prediction.quality if prediction else None,
    }


def _decision_row(values: dict[str, Any], api_key: ApiKey | None) -> DecisionLog:
    """The DecisionLog that `DecisionLog(api_key=api_key, **values)` would build, built from the
    values' dict as Django builds the rows it loads. Model.__init__ walks every field through its
    descriptor and sends pre_init and post_init (DecisionLog has no receivers; a test says so): 154k
    instructions against 22k (bench/instructions.py --stages). The instance is unsaved
    (`_state.adding`), with the key object cached and, as the key's descriptor sets it, its database."""
    row = DecisionLog.__new__(DecisionLog)
    state = row._state = ModelState()
    state.fields_cache = {"api_key": api_key}
    if api_key is not None:
        state.db = router.db_for_write(DecisionLog, instance=api_key)
        if api_key._state.db is None:
            api_key._state.db = router.db_for_write(ApiKey, instance=row)
    row.__dict__.update(values)
    return row


def time_ordered_uuid() -> uuid.UUID:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Decision ids grow with time, so each INSERT lands on the right edge of the primary-key index
    instead of a random page: fewer pages touched and fewer full-page images in the WAL.
    """
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (random >> 62 & 0xFFF) << 64 | 0b10 << 62
    return uuid.UUID(int=value | random & (2**62 - 1))


def _insert_durably(row: DecisionLog, copy_line: Callable[[], bytes]) -> None:
    """Commit one new row before returning; raises (nothing answered) if it cannot be committed.

    `copy_line` builds the row's COPY line (for the writer) from the values the row was built from,
    with its JSON columns in the text that was hashed; only called when the writer takes the row.

    On PostgreSQL, outside any transaction: in a gevent worker (`make serve`'s default), the row
    goes to the worker's own group commit and this returns once it is committed together with the
    rows of the worker's other connections (ProcessGroupCommit). With sync workers, when a
    group-commit writer runs beside this process (`make serve` starts one), the row goes to it and
    this returns once the writer has committed it together with the rows other workers sent
    meanwhile (routing/services/decision_writer.py). Otherwise, or when a row is refused for
    anything but the database being away, it is one prepared INSERT in autocommit mode:
    a single round trip that PostgreSQL commits (WAL flushed, synchronous_commit) before it
    replies. Elsewhere (SQLite, or inside a test's transaction) the ORM does it.
    """
    # this thread's connection, looked up once: every `connection.x` looks it up in asgiref's Local
    # again (in a loop, `connection.vendor` measured 20k instructions, this look-up 15k, no call 4k)
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql" or any(
        not getattr(block, "_from_testcase", False) for block in db.atomic_blocks
    ):
        with transaction.atomic(durable=True):
            row.save(force_insert=True)
        return
    if db.in_atomic_block:
        _execute_prepared(row, _insert_sql())
        return
    committer = _process_group_commit() or _writer_client()
    if committer is not None:
        try:
            committed = committer.commit(copy_line())
        except DatabaseUnavailable as exc:
            # the commits could not reach PostgreSQL on a new connection: neither would this request,
            # and trying would hold it (in a gevent worker, until the pool's timeout). Logged as
            # "database unavailable: OperationalError: <this>" (scope_site.errors)
            detail = str(exc).removeprefix(DATABASE_UNAVAILABLE).lstrip(": ")
            raise OperationalError(f"{committer.committer} could not reach it: {detail}") from None
        if committed:
            return
        # refused or unanswered; it may have been committed before its answer was lost: never twice
        _execute_prepared(row, _insert_sql() + " ON CONFLICT (id) DO NOTHING")
        return
    _execute_prepared(row, _insert_sql())


def _process_group_commit() -> ProcessGroupCommit | None:
    """A gevent worker's own group commit (`make serve`'s default), created once per process; None
    elsewhere, or with SCOPE_GROUP_COMMIT=false."""
    global _group
    pid = os.getpid()
    if _group is None or _group[0] != pid:
        wanted = settings.SCOPE_GROUP_COMMIT and gevent_patched()
        _group = (pid, process_group_commit_for_default_database() if wanted else None)
    return _group[1]


_group: tuple[int, ProcessGroupCommit | None] | None = None


def process_group_commit_account() -> str | None:
    """What this process's own group commit did ("N rows in M commits (largest K), …"), if it ran."""
    group = _group[1] if _group is not None and _group[0] == os.getpid() else None
    return group.writer.stats_text() if group is not None else None


def _writer_client() -> WriterClient | None:
    path = settings.SCOPE_DECISION_WRITER_SOCKET
    if not path:
        return None
    global _client
    if _client is None or _client.path != path:
        _client = WriterClient(path)
    return _client


_client: WriterClient | None = None


def _execute_prepared(row: DecisionLog, sql: str) -> None:
    fields = _insert_fields()
    params = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields]
    with connection.cursor():  # the ORM's connection handling: health check, (re)connect
        pass
    raw: Any = _PreparedCursor(connection.connection)
    # Django's wrapper: its error classes, execute_wrappers and query logging apply as to any query
    cursor = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with cursor:
        cursor.execute(sql, params)


class _PreparedCursor(psycopg.Cursor[Any]):
    """A server-side-binding cursor whose statements are prepared once per connection."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        return super().execute(query, params, prepare=True, binary=binary)


@lru_cache(maxsize=1)
def _insert_fields() -> tuple[Field[Any, Any], ...]:
    return tuple(DecisionLog._meta.concrete_fields)


@lru_cache(maxsize=1)
def _insert_sql() -> str:
    fields = _insert_fields()
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    return (
        f"INSERT INTO {connection.ops.quote_name(DecisionLog._meta.db_table)} ({columns}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
