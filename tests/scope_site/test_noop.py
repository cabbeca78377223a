"""The benchmark's endpoints (bench/overhead.py): the no-op, and the no-op plus one committed INSERT."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from scope_site.noop import FLOOR_TABLE
from tests.conftest import USER_MESSAGE, live_database_url, requires_postgres

pytestmark = pytest.mark.urls("tests.scope_site.noop_urls")


def _committed_rows() -> int:
    """Rows of the floor's table as another connection sees them: committed ones only."""
    with psycopg.connect(live_database_url(), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [FLOOR_TABLE]).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute(f"SELECT count(*) FROM {FLOOR_TABLE}").fetchone()
        return int(row[0]) if row else 0


def test_the_noop_answers_without_routing_or_writing(api: Any) -> None:
    response = api("/api/v1/noop", {"messages": USER_MESSAGE("hi")})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "messages": 1}


def test_the_noop_needs_an_api_key_like_the_route(api: Any) -> None:
    assert api("/api/v1/noop", {"messages": USER_MESSAGE("hi")}, key=None).status_code == 401
    assert api("/api/v1/noop-insert", {"messages": USER_MESSAGE("hi")}, key=None).status_code == 401


def _rows_here() -> int:
    """Rows of the floor's table on this test's own connection (0 before the endpoint created it)."""
    from django.db import connection

    if FLOOR_TABLE not in connection.introspection.table_names():
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {FLOOR_TABLE}")
        return int(cursor.fetchone()[0])


def test_the_insert_floor_writes_a_row_on_any_database(transactional_db: Any, api: Any) -> None:
    before = _rows_here()  # the table outlives a test on PostgreSQL (not one of Django's tables)
    response = api("/api/v1/noop-insert", {"messages": USER_MESSAGE("hi")})
    assert response.status_code == 200 and response.json() == {"ok": True, "messages": 1}
    assert _rows_here() == before + 1


@requires_postgres
def test_the_insert_floor_commits_one_row_before_it_answers(transactional_db: Any, api: Any) -> None:
    before = _committed_rows()
    for n in (1, 2):
        response = api("/api/v1/noop-insert", {"messages": USER_MESSAGE("hi") * n})
        assert response.status_code == 200
        assert response.json() == {"ok": True, "messages": n}
        assert _committed_rows() == before + n  # seen from another connection when answered
