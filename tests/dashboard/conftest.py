from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from routing.dashboard.accounts import user_create_or_update
from routing.dashboard.roles import Role
from routing.models import DecisionLog
from routing.services.route import route_decide

PASSWORD = "correct-horse-battery"


@pytest.fixture
def persona(db: Any) -> Callable[[str], Client]:
    """A logged-in client for a persona: operator, auditor, viewer, outsider (no role) or anonymous."""

    def make(name: str) -> Client:
        client = Client()
        if name == "anonymous":
            return client
        if name == "outsider":
            get_user_model().objects.create_user(username="outsider", password=PASSWORD)
        else:
            user_create_or_update(actor="test", username=name, role=Role(name), password=PASSWORD)
        assert client.login(username=name, password=PASSWORD)
        return client

    return make


@pytest.fixture
def decisions(catalog: Any) -> list[DecisionLog]:
    """A few real decisions through the route service (code, maths, chit-chat; premium and free)."""
    prompts = [
        "Write a Python function that parses JSON and explain the recursion step by step",
        "What is 17 * 23? Show the calculation",
        "hello there, how are you?",
        "Summarize this paragraph in three bullets: the meeting moved to Tuesday",
        "Prove that the square root of 2 is irrational",
    ]
    rows = []
    for i, text in enumerate(prompts * 2):
        result = route_decide(
            messages=[{"role": "user", "content": text}],
            api_key=None,
            metadata={"plan": "premium" if i % 2 else "free"},
            user=f"user-{i}",
        )
        rows.append(result.row)
    return rows
