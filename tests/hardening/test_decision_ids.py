"""Decision ids are version-7 UUIDs: unique, and ordered by the time they were made."""

from __future__ import annotations

import uuid
from typing import Any
from unittest import mock

import pytest

from routing.models import DecisionLog
from routing.services.decision_log import time_ordered_uuid
from tests.conftest import USER_MESSAGE


def test_ids_are_version_7_and_sort_by_their_millisecond() -> None:
    with mock.patch("routing.services.decision_log.time.time_ns", return_value=1_700_000_000_000_000_000):
        earlier = [time_ordered_uuid() for _ in range(50)]
    with mock.patch("routing.services.decision_log.time.time_ns", return_value=1_700_000_000_001_000_000):
        later = time_ordered_uuid()
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in [*earlier, later])
    assert len(set(earlier)) == 50
    assert later > max(earlier)
    assert later.int >> 80 == 1_700_000_000_001


@pytest.mark.django_db
def test_a_logged_decision_carries_a_time_ordered_id(api: Any) -> None:
    ids = [api("/api/v1/route", {"messages": USER_MESSAGE(f"q{i}")}).json()["decision_id"] for i in range(3)]
    rows = DecisionLog.objects.filter(id__in=ids)
    assert rows.count() == 3
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert [uuid.UUID(i).int >> 80 for i in ids] == sorted(uuid.UUID(i).int >> 80 for i in ids)
