"""The one HTTP boundary for provider calls: explicit timeouts, no hidden retries, classified errors.

Every adapter goes through `http_post()`. It never retries (retries live in one layer only:
providers.execution) and turns every failure into a `ProviderError` that says whether trying
again can help (`permanent=False`) and how long the upstream asked us to wait (`retry_after`).
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

# statuses that say "this request, as sent, will never work here": do not retry on this model
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 415, 422})
# of those, the ones that mean the provider (key, model id, URL) is misconfigured rather than
# the request being bad: another model may still answer
PROVIDER_CONFIG_STATUSES = frozenset({401, 403, 404, 405})
_MAX_ERROR_EXCERPT = 300


class ProviderError(Exception):
    """A failed upstream call. `permanent` decides retry (transient) vs. give up on this model."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        error_class: str,
        status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.error_class = error_class
        self.status = status
        self.retry_after = retry_after
        self.param = param  # the request field at fault, when the upstream (or adapter) named one

    @property
    def request_is_bad(self) -> bool:
        """The caller's request itself was refused (400/413/422): no other model will take it either."""
        return self.permanent and self.status is not None and self.status not in PROVIDER_CONFIG_STATUSES

    @property
    def unsupported(self) -> bool:
        """The adapter cannot express the request for its provider (e.g. a tool type it does not
        map): says nothing about the upstream's health, but another provider kind may serve it."""
        return self.error_class == "unsupported"

    def __repr__(self) -> str:
        return f"ProviderError({self.error_class}, status={self.status}, permanent={self.permanent})"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(response: requests.Response) -> tuple[str, str | None]:
    """The upstream's own error message and `param` (OpenAI and Anthropic both use
    {"error": {"message"}}; OpenAI adds the offending field as `param`)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_ERROR_EXCERPT], None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            param = err.get("param")
            return str(err["message"])[:_MAX_ERROR_EXCERPT], param[:200] if isinstance(param, str) else None
        if isinstance(err, str):
            return err[:_MAX_ERROR_EXCERPT], None
    return json.dumps(body)[:_MAX_ERROR_EXCERPT], None


def error_from_status(response: requests.Response) -> ProviderError:
    status = response.status_code
    detail, param = _error_detail(response)
    message = f"upstream answered HTTP {status}: {detail}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return ProviderError(
            message, permanent=False, error_class="rate_limited", status=status, retry_after=retry_after
        )
    if status in PERMANENT_STATUSES:
        error_class = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "bad_request")
        return ProviderError(message, permanent=True, error_class=error_class, status=status, param=param)
    # 408, 409, 425, 5xx and anything unexpected: the upstream may well answer next time
    return ProviderError(
        message, permanent=False, error_class="upstream_error", status=status, retry_after=retry_after
    )


_local = threading.local()


def _session() -> requests.Session:
    """One pooled session per thread (requests sessions are not thread-safe); urllib3 retries off."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=0, pool_connections=16, pool_maxsize=32)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


def http_post(
    url: str,
    *,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    connect_timeout_s: float,
    read_timeout_s: float,
    stream: bool = False,
) -> requests.Response:
    """POST JSON; returns the 2xx response (unread when `stream`), else raises ProviderError."""
    try:
        response = _session().post(
            url,
            json=payload,
            headers={"Content-Type": "application/json", **headers},
            timeout=(connect_timeout_s, read_timeout_s),
            stream=stream,
        )
    except requests.exceptions.ConnectTimeout:
        raise ProviderError(
            f"connect timeout after {connect_timeout_s:g}s", permanent=False, error_class="connect_timeout"
        ) from None
    except requests.exceptions.ReadTimeout:
        raise ProviderError(
            f"no response within the {read_timeout_s:g}s read timeout", permanent=False, error_class="timeout"
        ) from None
    except requests.exceptions.InvalidURL as exc:
        raise ProviderError(f"invalid provider URL: {exc}", permanent=True, error_class="config") from None
    except requests.exceptions.RequestException as exc:
        raise ProviderError(
            f"connection failed: {exc.__class__.__name__}", permanent=False, error_class="connection"
        ) from None
    if response.status_code >= 400:
        try:
            return_error = error_from_status(response)
        finally:
            response.close()
        raise return_error
    return response


def iter_sse(response: requests.Response) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event name, data) pairs; transport failures become ProviderError.

    The caller decides what a normal end of stream looks like: an upstream that just closes the
    connection makes this iterator end, and the adapter reports the stream as cut.
    """
    event = ""
    data: list[str] = []
    try:
        for raw in response.iter_lines(chunk_size=None, decode_unicode=False):
            line = raw.decode("utf-8", errors="replace")
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            yield event or "message", "\n".join(data)
    except requests.exceptions.ConnectionError as exc:
        # urllib3 wraps a read timeout inside a stream as a ConnectionError
        timed_out = "timed out" in str(exc).lower() or "timeout" in exc.__class__.__name__.lower()
        raise ProviderError(
            "stream stalled past the read timeout" if timed_out else "stream connection broken",
            permanent=False,
            error_class="stream_timeout" if timed_out else "stream_cut",
        ) from None
    except requests.exceptions.RequestException as exc:  # ChunkedEncodingError, ...
        raise ProviderError(
            f"stream broken: {exc.__class__.__name__}", permanent=False, error_class="stream_cut"
        ) from None
    finally:
        response.close()
