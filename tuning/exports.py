"""Export a recommended configuration for our endpoint and for TensorFlow Serving.

- ``serving_config.json``: ``ServingConfig.to_dict()``; loads back with
  ``ServingConfig.from_json_file`` and ``python -m agent.serving --config FILE``.
- ``batching_parameters.txt``: TF Serving's ``BatchingParameters`` message in
  protobuf text format, for ``tensorflow_model_server --enable_batching
  --batching_parameters_file=...``. The wrapped scalar fields are
  ``google.protobuf.Int64Value`` (hence ``max_batch_size { value: 32 }``);
  ``allowed_batch_sizes`` is a plain repeated int64 (one line per entry). The text
  is built by ``agent.tfserving`` (which also writes the whole TF Serving bundle:
  SavedModel, models.config, SERVE.md).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from agent.serving.config import ServingConfig
from agent.tfserving import tf_serving_batching_text
from runs.configs import atomic_write_text

__all__ = ["parse_batching_text", "serving_config_json", "tf_serving_batching_text", "write_exports"]

SERVING_JSON = "serving_config.json"
TF_SERVING_TEXT = "batching_parameters.txt"
RECOMMENDATION_JSON = "recommendation.json"


def serving_config_json(config: ServingConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def parse_batching_text(text: str) -> dict[str, Any]:
    """Read back the subset of protobuf text format ``tf_serving_batching_text`` writes.

    Used by tests and by the Tune page's preview; not a general protobuf parser.
    """
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            inner = rest.rsplit("}", 1)[0].strip()
            key, _, value = inner.partition(":")
            if key.strip() != "value" or not value.strip():
                raise ValueError(f"expected '{name.strip()} {{ value: N }}'; got {raw!r}")
            out[name.strip()] = int(value.strip())
        else:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"expected 'name: value'; got {raw!r}")
            value = value.strip()
            parsed: Any = value == "true" if value in ("true", "false") else int(value)
            if name.strip() == "allowed_batch_sizes":
                out.setdefault("allowed_batch_sizes", []).append(parsed)
            else:
                out[name.strip()] = parsed
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_exports(
    out_dir: str | os.PathLike[str],
    config: ServingConfig,
    *,
    recommendation: dict[str, Any] | None = None,
    comment: str | None = None,
) -> dict[str, Path]:
    """Write the JSON config, the TF Serving text and (if given) the recommendation; returns the paths."""
    out = Path(out_dir)
    paths = {"serving_config": out / SERVING_JSON, "tf_serving": out / TF_SERVING_TEXT}
    atomic_write_text(paths["serving_config"], serving_config_json(config))
    atomic_write_text(paths["tf_serving"], tf_serving_batching_text(config, comment=comment))
    if recommendation is not None:
        paths["recommendation"] = out / RECOMMENDATION_JSON
        atomic_write_text(paths["recommendation"], json.dumps(_json_safe(recommendation), indent=2) + "\n")
    return paths
