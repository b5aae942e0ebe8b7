"""wrk, the load generator bench/serving.py uses when installed (C, epoll: far faster than any Python client).

``drive_wrk`` runs a warm-up and a measured run pinned to the client core and
reads the server's CPU around the measured one.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from runs.metrics_scrape import server_cpu_seconds

CLIENT_CORE = 1
WARMUP_S = 1.5


@dataclass(frozen=True)
class LoadStats:
    requests: int
    seconds: float
    cpu_s: float  # server CPU seconds over the measured interval
    p50_ms: float
    p99_ms: float
    errors: int


WRK_SCRIPT = """
-- Round-robin over pre-built requests: one body per slot, like the Python client's connections.
local reqs = {}
local bodies = %(bodies)s
local i = 0
init = function(args)
  for k, b in ipairs(bodies) do
    reqs[k] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, b)
  end
end
request = function()
  i = i %% #reqs + 1
  return reqs[i]
end
"""
WRK_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_script(path: str, bodies: Sequence[bytes]) -> str:
    """The Lua script that makes wrk POST ``bodies`` in turn to ``path``."""
    lua_bodies = "{" + ", ".join(_lua_string(b.decode()) for b in bodies) + "}"
    return WRK_SCRIPT % {"bodies": lua_bodies, "path": path}


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def parse_wrk(out: str) -> tuple[int, float, float, float, int]:
    """(requests, seconds, p50 ms, p99 ms, errors) from ``wrk --latency`` output."""
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out, re.M)
    if m is None:
        raise RuntimeError(f"unexpected wrk output: {out.strip()[:300]!r}")
    requests = int(m[1])
    seconds = float(m[2]) * WRK_TIME_UNITS[m[3]] / 1000.0

    def pct(q: str) -> float:
        pm = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s|m|h)", out, re.M)
        return float(pm[1]) * WRK_TIME_UNITS[pm[2]] if pm else math.nan

    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx[1])
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return requests, seconds, pct("50"), pct("99"), errors


def drive_wrk(wrk: str, port: int, path: str, bodies: Sequence[bytes], clients: int, seconds: float,
              pid: int) -> LoadStats:
    """A warm-up wrk run, then a measured one; server CPU is read just before and after the measured run
    (the server is idle outside it, so its CPU over that span is the CPU of the requests wrk counted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(path, bodies))
    url = f"http://127.0.0.1:{port}{path}"

    def run(duration_s: int) -> str:
        out = subprocess.run(["taskset", "-c", str(CLIENT_CORE), wrk, "-t1", f"-c{clients}", f"-d{duration_s}s",
                              "--latency", "-s", f.name, url], capture_output=True, text=True,
                             timeout=duration_s + 30, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:300]}")
        return out.stdout

    try:
        run(max(1, math.ceil(WARMUP_S)))
        cpu0 = server_cpu_seconds(pid)
        out = run(max(1, round(seconds)))
        cpu1 = server_cpu_seconds(pid)
    finally:
        os.unlink(f.name)
    requests, secs, p50, p99, errors = parse_wrk(out)
    return LoadStats(requests, secs, cpu1 - cpu0, p50, p99, errors)
