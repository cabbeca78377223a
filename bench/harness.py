"""Shared parts of the HTTP benchmarks: a SCOPE server started with `make serve`, wrk runs, counts.

Everything stays on 127.0.0.1. The server runs the real production stack (`make serve`'s gunicorn
workers on PostgreSQL + Redis); the load generator is wrk (Debian package `wrk`) in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/scope"  # the CI database; DATABASE_URL wins
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # REDIS_URL wins


def bench_env(*, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SCOPE_TESTING", None)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="scope_site.settings",
        SCOPE_LOG_LEVEL=env.get("SCOPE_LOG_LEVEL", "WARNING"),
    )
    env.update(extra)
    return env


def manage(env: Mapping[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip()


def prepare_database(env: Mapping[str, str], key_name: str) -> str:
    """Migrate, seed the demo catalog and create an API key (no rate or budget limit); returns it."""
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "seed_demo")
    return manage(env, "create_api_key", key_name).splitlines()[-1]


def activate_trained_predictor(env: Mapping[str, str], source: str = "routellm-gsm8k") -> str:
    """Import a real outcome set and train + activate a predictor on it, unless one is active already.

    The demo catalog holds the two models of the RouteLLM sets, so the route path then runs the
    trained predictor (with its anchors) for them and the conservative path for the rest: the
    route overhead is measured with real inference, not the tier prior.
    """
    active = active_predictor_name(env)
    if active:
        return active
    folder = Path(env.get("SCOPE_DATA_DIR") or ROOT.parent / "shared" / "data") / source
    if not (folder / "outcomes.jsonl").exists():
        return ""
    manage(env, "import_outcomes", str(folder / "outcomes.jsonl"), "--models", str(folder / "models.json"))
    out = manage(env, "train_predictor", "--source", source, "--activate")
    return next((line.split()[2] for line in out.splitlines() if line.startswith("stored predictor")), "")


def active_predictor_name(env: Mapping[str, str]) -> str:
    """The name of the predictor version active in the database, or ""."""
    out = manage(
        env,
        "shell",
        "-v",
        "0",
        "-c",
        "from feedback.models import PredictorVersion as P; v = P.objects.filter(is_active=True).first(); "
        "print(v.name if v else '')",
    )
    return out.splitlines()[-1] if out.strip() else ""


def refuse_prior_with_active_predictor(env: Mapping[str, str]) -> None:
    """--prior measures routing with the tier prior; a database with an active predictor would route
    with that predictor instead, whatever the flag says."""
    active = active_predictor_name(env)
    if active:
        raise SystemExit(
            f"--prior: predictor {active} is active in this database, so it would route, not the tier "
            "prior; point DATABASE_URL at a database without one (e.g. a new, empty one)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None


def serve_workers(env: Mapping[str, str], workers: int | None) -> str:
    """How `make serve` runs its workers under `env`, for the benchmarks' headers."""
    kind = env.get("SCOPE_WORKER_CLASS") or "gevent"
    count = str(workers) if workers else "WORKERS (the Makefile's)"
    return f"{count} {kind} workers"


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def scope_server(env: Mapping[str, str], *, workers: int | None = None, log_dir: Path) -> Iterator[Server]:
    """`make serve` on a free port; yields once /healthz answers, stops the whole group after."""
    port = free_port()
    # its own Prometheus multiprocess directory: other servers on this machine keep theirs
    prometheus_dir = log_dir / f"prom-{port}"
    prometheus_dir.mkdir(parents=True, exist_ok=True)
    make_env = dict(env, PORT=str(port), HOST="127.0.0.1", PROMETHEUS_MULTIPROC_DIR=str(prometheus_dir))
    if workers:
        make_env["WORKERS"] = str(workers)
    log_path = log_dir / f"serve-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "serve"] + ([f"WORKERS={workers}"] if workers else []),
        cwd=ROOT,
        env=make_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one below
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"make serve exited early; see {log_path}:\n{log_path.read_text()[-3000:]}")
            try:
                status, _ = http_get_json(base_url + "/healthz", timeout=1.0)
                if status in (200, 503):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise SystemExit(f"SCOPE did not start within 90 s; see {log_path}")
        yield Server(base_url=base_url, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


# --- wrk -------------------------------------------------------------------------------------

_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeout_errors":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# Every response is written as "<unix seconds> <status> <decision id or ->" to one file per wrk
# thread, so answered decisions can be checked one by one against the database afterwards.
_LUA_RECORDING = """
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end
function init(args)
  out = io.open("{directory}/responses-" .. thread_no .. ".txt", "w")
  out:setvbuf("line")
end
function response(status, headers, body)
  local id = headers["X-Scope-Decision-Id"] or headers["x-scope-decision-id"]
  if id == nil and body ~= nil then
    id = string.match(body, '"decision_id"%s*:%s*"([0-9a-f%-]+)"')
  end
  out:write(os.time(), " ", status, " ", id or "-", "\\n")
end
"""


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal that cannot be closed by the text itself."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


@dataclass(frozen=True)
class WrkResult:
    endpoint: str
    connections: int
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def answered_2xx(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_script(directory: Path, *, body: bytes, key: str) -> Path:
    path = directory / "post.lua"
    path.write_text(_LUA.format(body=lua_string(body.decode()), key=key))
    return path


def recording_script(directory: Path, *, body: bytes, key: str) -> Path:
    """A wrk script that records every response (time, status, decision id) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "record.lua"
    script.write_text(
        _LUA.format(body=lua_string(body.decode()), key=key) + _LUA_RECORDING.format(directory=directory)
    )
    return script


@dataclass(frozen=True)
class Response:
    at: int
    status: int
    decision_id: str


def read_responses(directory: Path) -> list[Response]:
    responses = []
    for path in sorted(directory.glob("responses-*.txt")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                responses.append(Response(int(parts[0]), int(parts[1]), parts[2]))
    return responses


def missing_decisions(database_url: str, ids: list[str]) -> int:
    """How many of these answered decision ids have no committed row (must be 0)."""
    if not ids:
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(ids) + "\n")
    script = (
        "CREATE TEMP TABLE answered (id uuid);\n"
        f"\\copy answered FROM '{handle.name}'\n"
        "SELECT count(*) FROM answered a LEFT JOIN routing_decisionlog d ON d.id = a.id WHERE d.id IS NULL;\n"
    )
    result = subprocess.run(
        ["psql", database_url, "-tA", "-v", "ON_ERROR_STOP=1"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    os.unlink(handle.name)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return int(result.stdout.strip().splitlines()[-1])


def run_wrk(
    url: str, *, script: Path, connections: int, seconds: float, threads: int = 1, timeout_s: int = 10
) -> WrkResult:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    result = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in result.stderr.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {result.stdout}\n{result.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    socket_errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeout_errors"))
    return WrkResult(
        endpoint=url.rsplit("/", 1)[-1],
        connections=connections,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non_2xx=data["status_errors"],
        socket_errors=socket_errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


# --- CPU accounting ---------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int, *, reaped: bool = False) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a live process, or None.

    With `reaped`, the CPU of its children that have exited and been waited for is added too (a
    gunicorn worker recycled by --max-requests takes its CPU time into its parent's account).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks / _TICK


def process_tree_cpu_split(root: int) -> dict[str, float]:
    """CPU seconds used so far by `root`'s tree: {"writer": the decision writer and its
    supervisor, "workers": every other process of the tree (gunicorn master and workers)}."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name), reaped=True)
            if stat is not None:
                stats[int(entry.name)] = stat
    split = {"workers": 0.0, "writer": 0.0}
    frontier = {root}
    while frontier:
        for pid in frontier & stats.keys():
            split["writer" if _is_writer(pid) else "workers"] += stats[pid][1]
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier}
    return split


def _is_writer(pid: int) -> bool:
    try:
        return b"decision_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def machine_ticks() -> tuple[int, int, int]:
    """(idle, stolen, all) clock ticks of every CPU so far, from /proc/stat: idle counts iowait too;
    stolen is the time the hypervisor ran something else while this machine had work."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], fields[7], sum(fields)


def machine_shares(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[float, float]:
    """(busy, stolen) shares of every CPU's time between two machine_ticks() readings."""
    idle, stolen, total = (b - a for a, b in zip(before, after, strict=True))
    return (1.0 - idle / total, stolen / total) if total else (0.0, 0.0)


def postgres_backends_cpu(database_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to this database."""
    result = subprocess.run(
        ["psql", database_url, "-tAc", "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    total = 0.0
    for line in result.stdout.split():
        stat = _proc_stat(int(line)) if line.isdigit() else None
        total += stat[1] if stat else 0.0
    return total


# --- counting decision rows -------------------------------------------------------------------


def count_decisions(database_url: str, key_name: str) -> int:
    """Committed decision rows of one API key, read with psql (a separate connection)."""
    sql = (
        "SELECT count(*) FROM routing_decisionlog d WHERE d.api_key_name = "
        + "'"
        + key_name.replace("'", "''")
        + "'"
    )
    result = subprocess.run(
        ["psql", database_url, "-tAc", sql], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return int(result.stdout.strip())


def chat_body(target_bytes: int = 2200, *, models: Sequence[str] = ()) -> bytes:
    """A realistic multi-turn chat request of about `target_bytes` of JSON (the issue's 2.2 KB),
    limited to the candidate `models` if any are given."""
    system = (
        "You are a senior engineer at an invoicing company. Answer precisely, show the corrected code, "
        "and explain the cost of each step."
    )
    question = (
        "Our service parses supplier invoices and totals them. Why is this function slow on 50,000 lines, "
        "and how would you rewrite it?\n\n```python\ndef total(items):\n    s = 0\n    for i in items:\n"
        "        s = s + float(i['price']) * int(i['qty'])\n    return round(s, 2)\n```\n"
        "Also: 17 items at $3.25 each with 8% tax, what is the total? Explain step by step."
    )
    answer = "Sure. Could you tell me which Python version you run and where the items come from?"
    follow = "Python 3.11; the items come from a JSON export, about 4 MB per file."
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": follow},
    ]
    body: dict[str, Any] = {"messages": messages, "user": "bench-user", "metadata": {"team": "billing"}}
    if models:
        body["models"] = list(models)
    filler = " Context: the invoices are in EUR and USD; amounts have two decimals; lines may repeat."
    while len(json.dumps(body).encode()) < target_bytes:
        messages[3]["content"] += filler
    return json.dumps(body).encode()


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def say(text: str = "") -> None:
    print(text, flush=True)
    sys.stdout.flush()
