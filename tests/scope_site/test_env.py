from __future__ import annotations

import pytest

from scope_site.env import ConfigurationError, env_choice, env_float, env_int, env_str


def test_a_variable_set_but_empty_takes_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_DEFAULT_POLICY", "")
    monkeypatch.setenv("SCOPE_WORKER_METRICS_ADDR", "  ")
    monkeypatch.setenv("SCOPE_PROMPT_STORAGE", "")
    assert env_str("SCOPE_DEFAULT_POLICY", "default") == "default"
    assert env_str("SCOPE_WORKER_METRICS_ADDR", "127.0.0.1") == "127.0.0.1"
    assert env_choice("SCOPE_PROMPT_STORAGE", "full", {"full", "redacted"}) == "full"


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_it_rejects_a_number_that_is_not_finite(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SCOPE_CATALOG_TTL_SECONDS", raw)
    with pytest.raises(ConfigurationError, match="is not a finite number"):
        env_float("SCOPE_CATALOG_TTL_SECONDS", 2.0, minimum=0.0)


def test_it_rejects_numbers_above_their_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_EXPLORATION_CAP", "2")
    monkeypatch.setenv("SCOPE_WORKER_METRICS_PORT", "99999")
    with pytest.raises(ConfigurationError, match=r"SCOPE_EXPLORATION_CAP=2.0 must be at most 1.0"):
        env_float("SCOPE_EXPLORATION_CAP", 0.1, minimum=0.0, maximum=1.0)
    with pytest.raises(ConfigurationError, match="SCOPE_WORKER_METRICS_PORT=99999 must be at most 65535"):
        env_int("SCOPE_WORKER_METRICS_PORT", 9540, minimum=0, maximum=65535)


def test_a_log_level_may_be_written_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    levels = {"DEBUG", "INFO", "WARNING"}
    monkeypatch.setenv("SCOPE_LOG_LEVEL", "debug")
    assert env_choice("SCOPE_LOG_LEVEL", "INFO", levels, any_case=True) == "DEBUG"
    with pytest.raises(ConfigurationError, match="must be one of"):
        env_choice("SCOPE_LOG_LEVEL", "INFO", levels)  # other choices stay exact
