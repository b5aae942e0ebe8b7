"""A fast look at a swarm's target before Locust starts: is anything listening there?

Without it, a dead URL costs the whole run time: Locust starts its users, every
request fails with "connection refused" (thousands of them), and the verdict comes
at the end. One TCP connect answers the question in milliseconds (a refused port)
or within ``CONNECT_TIMEOUT_S`` (an address that drops packets).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"http": 80, "https": 443}


def target_address(url: str) -> tuple[str, int]:
    """(host, port) of a base URL; ValueError naming what was wrong for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"target must be an http(s) URL like http://127.0.0.1:8600; got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"target URL {url!r} has a port that is not a number in 0..65535") from None
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def probe_target(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if something accepts connections at ``url``'s host and port, else the one-line reason."""
    try:
        host, port = target_address(url)
    except ValueError as exc:
        return str(exc)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        why = "connection refused (nothing listens there)"
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
    return (f"target {url} is not reachable: {why}; no load was sent. Start the endpoint "
            "(Serve page or python -m agent.serving) or check the URL")
