"""Read what TuneSwarm needs to know about a user's model: its signature, size and parameters.

    python -m agent.importing PATH      # prints one JSON line; exit 2 with one line if refused

Run as its own short process by the importer (``tuning.imports``), so the
dashboard's process never loads TensorFlow to look at a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.export import check_model_path, load_servable

EXIT_OK, EXIT_USAGE = 0, 2


@dataclass(frozen=True)
class ModelFacts:
    format: str  # "keras" or "saved_model"
    signature: dict[str, Any]  # agent.signature.Signature.to_dict()
    param_count: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "signature": self.signature, "param_count": self.param_count,
                "size_bytes": self.size_bytes}


def model_size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def inspect_model(path: str | Path) -> ModelFacts:
    """Load the model (safe mode for ``.keras``) and read its facts; ModelFormatError/SignatureError if refused."""
    p = check_model_path(path)
    servable = load_servable(p)
    if servable.keras_model:
        params = int(servable.model.count_params())
    else:
        params = int(sum(int(v.shape.num_elements() or 0) for v in getattr(servable.model, "variables", ())))
    return ModelFacts("keras" if servable.keras_model else "saved_model", servable.signature.to_dict(), params,
                      model_size_bytes(p))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.importing",
                                description="Print a model's signature, parameter count and size as one JSON line.")
    p.add_argument("model", help="a .keras file or a SavedModel directory")
    args = p.parse_args(argv)
    try:
        facts = inspect_model(args.model)
    except Exception as exc:  # a refused or unreadable model: one line, never a traceback
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(facts.to_dict()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
