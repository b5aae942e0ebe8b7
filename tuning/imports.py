"""Import a user's model (a ``.keras`` file or a SavedModel directory) into the run registry.

An imported model becomes a run of kind ``train`` with ``{"imported": true, ...}``
in its config and status ``completed``, so every model picker, the Serve, Load test
and Tune pages and the sweeps take it exactly as a model TuneSwarm trained. Its
artifact folder holds what a trained bundle holds, minus training metrics:

- ``model.keras`` or ``saved_model/``  a copy of the model
- ``signature.json``                  its inputs and outputs (``agent.signature``)
- ``samples.json``                    payload rows generated from the signature
                                      (``loadtest.payload``: uniform [0, 1] floats,
                                      token ids 0..vocab-1), for swarms and sweeps

The model is inspected in a short child process (``python -m agent.importing``)
before anything is recorded, so a refused model leaves no run behind and the
caller's process (the dashboard) never loads TensorFlow. This module sits in
``tuning`` because it composes ``agent`` and ``loadtest``, which never import
each other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.importing import model_size_bytes
from loadtest import payload
from runs.registry import Registry

MAX_IMPORT_BYTES = 500 * 1024 * 1024  # a model (file or directory) larger than this is refused
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # uploads through the Serve page (.streamlit/config.toml maxUploadSize too)
INSPECT_TIMEOUT_S = 180.0
IMPORT_SAMPLES = 64
KERAS_NAME = "model.keras"
SAVED_MODEL_DIRNAME = "saved_model"
SIGNATURE_FILENAME = "signature.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ImportRefusedError(ValueError):
    """The model cannot be imported; the message is one line saying why and what is expected."""


@dataclass(frozen=True)
class ImportedModel:
    run_id: str
    model_path: Path
    facts: dict[str, Any]  # format, signature, param_count, size_bytes


def inspect(path: Path, timeout_s: float = INSPECT_TIMEOUT_S) -> dict[str, Any]:
    """The model's facts from ``python -m agent.importing`` (a child process: TF stays out of ours)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "agent.importing", str(path)], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    except subprocess.TimeoutExpired:
        raise ImportRefusedError(f"{path.name}: reading the model took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        reason = lines[-1][len("error: "):] if lines else f"the model reader exited with {proc.returncode}"
        raise ImportRefusedError(reason)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def import_model(registry: Registry, source: str | os.PathLike[str], name: str | None = None) -> ImportedModel:
    """Inspect, copy and record ``source``; raises ImportRefusedError (nothing recorded) if refused."""
    src = Path(source).expanduser()
    if not src.exists():
        raise ImportRefusedError(f"{src}: no such file or directory; expected a .keras file or a SavedModel directory")
    size = model_size_bytes(src)
    if size > MAX_IMPORT_BYTES:
        raise ImportRefusedError(f"{src.name}: {size / 2**20:.0f} MB is over the import limit of "
                                 f"{MAX_IMPORT_BYTES // 2**20} MB")
    facts = inspect(src)
    fmt = facts["format"]
    config = {"imported": True, "source": str(src.resolve()), "format": fmt}
    run_id = registry.create_run("train", config, name=name or f"imported {src.name}", status="running")
    folder = registry.artifacts_dir(run_id)
    try:
        if fmt == "saved_model":
            target = folder / SAVED_MODEL_DIRNAME
            shutil.copytree(src, target)
        else:
            target = folder / KERAS_NAME
            shutil.copy2(src, target)
        (folder / SIGNATURE_FILENAME).write_text(json.dumps(facts["signature"], indent=2))
        inputs = payload.signature_from_file(folder / SIGNATURE_FILENAME)
        payload.write_instances(folder / payload.SAMPLES_FILENAME,
                                payload.generate_instances(inputs, payload.PayloadSpec(), IMPORT_SAMPLES))
        registry.update_summary(run_id, {
            "model_path": str(target), "imported": True, "format": fmt, "signature": facts["signature"],
            "param_count": facts["param_count"], "size_bytes": facts["size_bytes"],
            "data": {"name": f"imported ({fmt.replace('_', ' ')})", "task": None},
        })
        registry.set_status(run_id, "completed")
    except BaseException:
        # Never a half-written record: the run and its folder go together.
        registry.set_status(run_id, "failed", "import did not finish")
        registry.delete_run(run_id)
        raise
    return ImportedModel(run_id, target, facts)


def import_upload(registry: Registry, filename: str, data: bytes, name: str | None = None) -> ImportedModel:
    """Import an uploaded ``.keras`` file, or a ``.zip`` holding one SavedModel directory."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImportRefusedError(f"{filename}: {len(data) / 2**20:.0f} MB is over the upload limit of "
                                 f"{MAX_UPLOAD_BYTES // 2**20} MB")
    suffix = Path(filename).suffix.lower()
    if suffix not in (".keras", ".zip"):
        raise ImportRefusedError(f"{filename}: expected a .keras file or a .zip of a SavedModel directory")
    with tempfile.TemporaryDirectory(prefix="tuneswarm-upload-", dir=registry.home) as tmp:
        stem = Path(filename).stem or "model"
        if suffix == ".keras":
            path = Path(tmp) / f"{stem}.keras"
            path.write_bytes(data)
        else:
            path = _unzip_saved_model(Path(tmp), stem, data)
        return import_model(registry, path, name=name or f"imported {filename}")


def _unzip_saved_model(tmp: Path, stem: str, data: bytes) -> Path:
    archive = tmp / "upload.zip"
    archive.write_bytes(data)
    out = tmp / stem
    try:
        with zipfile.ZipFile(archive) as z:
            total = sum(i.file_size for i in z.infolist())
            if total > MAX_IMPORT_BYTES:
                raise ImportRefusedError(f"{stem}.zip unpacks to {total / 2**20:.0f} MB, over the import limit")
            for info in z.infolist():
                target = (out / info.filename).resolve()
                if not target.is_relative_to(out.resolve()):
                    raise ImportRefusedError(f"{stem}.zip holds a path outside the archive ({info.filename!r})")
            z.extractall(out)
    except zipfile.BadZipFile:
        raise ImportRefusedError(f"{stem}.zip is not a zip archive") from None
    found = [p.parent for p in out.rglob("saved_model.pb")]
    if len(found) != 1:
        raise ImportRefusedError(f"{stem}.zip must hold exactly one SavedModel directory (saved_model.pb); "
                                 f"found {len(found)}")
    return found[0]

