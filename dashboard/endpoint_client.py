"""The Serve page's HTTP client for one real request to a local endpoint (TF Serving's ``:predict``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

PREDICT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Local endpoints only: never route these requests through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def predict(url: str, model_name: str, rows: Sequence[Any],
            timeout_s: float = PREDICT_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """POST one TF Serving ``:predict`` request; returns (HTTP status, decoded JSON body).

    ``rows`` are instances as TF Serving's row format takes them: nested lists, or
    objects keyed by input name for a model with several inputs."""
    body = json.dumps({"instances": list(rows)}).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/models/{model_name}:predict", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read(MAX_RESPONSE_BYTES) or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read(MAX_RESPONSE_BYTES) or b"{}")
        except ValueError:
            payload = {"error": f"HTTP {exc.code} with a non-JSON body"}
        return exc.code, payload
