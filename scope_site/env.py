"""Typed readers for environment variables that fail loudly on bad values."""

from __future__ import annotations

import math
import os
from urllib.parse import urlparse


class ConfigurationError(RuntimeError):
    """A setting read from the environment has a value SCOPE cannot use."""


def env_str(name: str, default: str = "") -> str:
    # set but empty counts as unset, as in every other helper here: `SCOPE_DEFAULT_POLICY=` must
    # not route to a policy named "" nor `SCOPE_WORKER_METRICS_ADDR=` bind every interface
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name}={value} must be at most {maximum}")
    return value


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf", which pass every comparison or limit
        raise ConfigurationError(f"{name}={raw!r} is not a finite number")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name}={value} must be at most {maximum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_weights(name: str, default: dict[str, float]) -> dict[str, float]:
    """`key=number,key=number` (non-negative numbers)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return dict(default)
    out: dict[str, float] = {}
    for item in env_list(name, []):
        key, sep, value = item.partition("=")
        try:
            number = float(value) if sep and key.strip() else -1.0
        except ValueError:
            number = -1.0
        if not number >= 0.0:  # also NaN
            raise ConfigurationError(f"{name}: {item!r} is not key=number (e.g. feedback=3,outcome=1)")
        out[key.strip()] = number
    return out


def env_choice(name: str, default: str, choices: set[str], *, any_case: bool = False) -> str:
    """One of `choices`; with `any_case`, written in any case (the choices are upper case)."""
    value = env_str(name, default)
    if any_case:
        value = value.upper()
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} must be one of: {', '.join(sorted(choices))}")
    return value


def env_url(name: str, *, schemes: set[str]) -> str:
    """Return the URL in `name` (or "" when unset), checking its scheme and host."""
    raw = env_str(name)
    if not raw:
        return ""
    parsed = urlparse(raw)
    if parsed.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ConfigurationError(
            f"{name} must start with one of: {allowed} (got {parsed.scheme or 'no scheme'!r})"
        )
    if parsed.scheme not in {"sqlite"} and not (parsed.hostname or parsed.path):
        raise ConfigurationError(f"{name}={raw!r} names no host")
    return raw
