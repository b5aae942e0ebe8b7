"""Starting ``streamlit run app.py`` as a child process (for the browser test and the start-up bench).

The server runs in its own process group so one ``killpg`` ends it and anything
it started; it binds 127.0.0.1 only and never opens a browser itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = PROJECT_ROOT / "app.py"
HEALTH_PATH = "/_stcore/health"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# Flags for Debian's Chromium in containers and CI (no sandbox, no GPU, no background traffic).
CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_streamlit(home: Path, port: int, log_path: Path, app: Path = APP) -> subprocess.Popen[bytes]:
    """Start the dashboard (or another ``app`` script) on 127.0.0.1:``port`` with ``home`` as its state dir."""
    env = dict(os.environ, TUNESWARM_HOME=str(home), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
            "--server.headless", "true", "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait (bounded) until Streamlit's health endpoint answers; raise if the process died or timed out."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it was healthy")
        try:
            with _NO_PROXY.open(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"streamlit not healthy on port {port} after {timeout_s:.0f}s")


def stop_streamlit(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
