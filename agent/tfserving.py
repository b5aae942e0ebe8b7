"""Ship a model to TensorFlow Serving: a versioned SavedModel plus the server's config files.

``write_bundle(out, model_path, config)`` writes::

    out/<name>/<version>/         SavedModel written by Keras' own ``model.export(format="tf_saved_model")``
                                  (a .keras model), or a copy of an imported SavedModel directory
    out/batching_parameters.txt   TF Serving ``BatchingParameters`` (protobuf text) from the ServingConfig
    out/models.config             ``ModelServerConfig`` text: base_path = the absolute path of out/<name>
    out/models.docker.config      the same for the container, base_path /models/<name> (out mounted at /models)
    out/serving_config.json       the TuneSwarm ServingConfig the batching came from
    out/request.json              two sample rows in TF Serving's row format (when the model has samples)
    out/SERVE.md                  the exact ``tensorflow_model_server`` and ``docker run`` command lines

Run ``python -m agent.tfserving --run-id ID --out DIR`` (or ``--model PATH``) to write one;
``python -m tuning ... --export-tfserving DIR`` writes one from a sweep's recommendation.
The text builders are pure functions; only ``export_saved_model`` needs TensorFlow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.serving.config import DEFAULT_CONFIG, ServingConfig

if TYPE_CHECKING:
    import keras

    from agent.signature import Signature, TensorSpec

BATCHING_FILENAME = "batching_parameters.txt"
MODELS_CONFIG_FILENAME = "models.config"
DOCKER_CONFIG_FILENAME = "models.docker.config"
SERVING_JSON_FILENAME = "serving_config.json"
REQUEST_FILENAME = "request.json"
SERVE_MD_FILENAME = "SERVE.md"
BUNDLE_DIRNAME = "tfserving"  # the bundle's folder inside a run's artifacts (Train and Tune pages)
DOCKER_MOUNT = "/models"  # where the tensorflow/serving image expects models
DOCKER_IMAGE = "tensorflow/serving"
DEFAULT_REST_PORT = 8501  # TF Serving's own defaults (8501 is also Streamlit's: pick another if both run)
DEFAULT_GRPC_PORT = 8500
REQUEST_ROWS = 2
MAX_ZIP_BYTES = 512 * 1024 * 1024
# A TF Serving model name is a URL path segment and here also a directory name.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


# -- pure text builders ------------------------------------------------------------------


def tf_serving_batching_text(config: ServingConfig, *, comment: str | None = None) -> str:
    """TF Serving ``BatchingParameters`` in protobuf text format.

    The wrapped scalars are ``google.protobuf.Int64Value`` (hence ``{ value: N }``);
    ``allowed_batch_sizes`` is a plain repeated int64, one line per entry. Our batch
    timeout is in milliseconds, TF Serving's in microseconds. TF Serving needs at
    least one batch thread: our ``num_batch_threads=0`` (batches run on the event
    loop) becomes 1. ``pad_variable_length_inputs`` is left at false: it pads inputs
    whose non-batch dimensions differ, and TuneSwarm's models have fixed shapes
    (padding up to ``allowed_batch_sizes`` happens without it).
    """
    micros = round(config.batch_timeout_ms * 1000)
    lines = []
    if comment:
        lines.extend(f"# {line}" for line in comment.splitlines())
    lines += [
        f"max_batch_size {{ value: {config.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {micros} }}",
        f"max_enqueued_batches {{ value: {config.max_enqueued_batches} }}",
        f"num_batch_threads {{ value: {max(config.num_batch_threads, 1)} }}",
    ]
    lines += [f"allowed_batch_sizes: {size}" for size in config.allowed_batch_sizes]
    return "\n".join(lines) + "\n"


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ValueError(
            f"model name must be letters, digits, '_', '.' or '-' (starting with a letter or digit); got {name!r}"
        )
    return name


def models_config_text(name: str, base_path: str) -> str:
    """``ModelServerConfig`` text with one ``model_config_list`` entry."""
    check_model_name(name)
    return (
        "model_config_list {\n"
        "  config {\n"
        f"    name: {json.dumps(name)}\n"
        f"    base_path: {json.dumps(base_path)}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )


def server_flags(config: ServingConfig, *, config_file: str, batching_file: str,
                 rest_port: int = DEFAULT_REST_PORT, grpc_port: int = DEFAULT_GRPC_PORT) -> list[str]:
    """``tensorflow_model_server`` flags for ``config``: ports, model config, batching, TF threads, deadline."""
    flags = [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config_file}",
        "--enable_batching=true",
        f"--batching_parameters_file={batching_file}",
    ]
    if config.intra_op_threads > 0:
        flags.append(f"--tensorflow_intra_op_parallelism={config.intra_op_threads}")
    if config.inter_op_threads > 0:
        flags.append(f"--tensorflow_inter_op_parallelism={config.inter_op_threads}")
    if config.request_timeout_ms > 0:
        flags.append(f"--rest_api_timeout_in_ms={round(config.request_timeout_ms)}")
    return flags


def _shell_line(groups: list[list[str]]) -> str:
    """One shell command, a group of words (an option and its value) per continued line, quoted as needed."""
    import shlex

    return " \\\n    ".join(" ".join(shlex.quote(w) for w in group) for group in groups)


def own_knobs(config: ServingConfig) -> list[str]:
    """The recommended settings TF Serving has no equivalent for, each with what to do instead."""
    notes = [f"runtime={config.runtime}: TF Serving always runs the SavedModel's TensorFlow graph; "
             "a gain TuneSwarm measured with tflite/xla does not carry over."]
    if config.workers > 1:
        notes.append(f"workers={config.workers}: TF Serving is one process; run {config.workers} replicas "
                     "behind a load balancer for the same effect.")
    if config.num_batch_threads == 0:
        notes.append("num_batch_threads=0 (batches on the event loop) has no TF Serving equivalent; written as 1.")
    notes.append(f"max_enqueued_batches={config.max_enqueued_batches}: the same bound in batches; TuneSwarm answers "
                 "503 at once when it is full, TF Serving fails the request with UNAVAILABLE "
                 "(batch scheduling queue full).")
    if config.request_timeout_ms <= 0:
        notes.append("request deadline: none set; TF Serving's REST default is --rest_api_timeout_in_ms=30000.")
    notes.append(f"max_body_bytes={config.max_body_bytes}, max_instances={config.max_instances}: TuneSwarm's own "
                 "limits; put them in a proxy in front of TF Serving if you need them.")
    return notes


@dataclass(frozen=True)
class ServeCommands:
    local: str
    docker: str


def serve_commands(root: Path, config: ServingConfig, *, rest_port: int = DEFAULT_REST_PORT,
                   grpc_port: int = DEFAULT_GRPC_PORT) -> ServeCommands:
    """The exact command lines for a bundle at ``root`` (absolute)."""
    local = [["tensorflow_model_server"], *([f] for f in server_flags(
        config, config_file=str(root / MODELS_CONFIG_FILENAME), batching_file=str(root / BATCHING_FILENAME),
        rest_port=rest_port, grpc_port=grpc_port))]
    # --entrypoint: the image's own entrypoint adds --model_name/--model_base_path flags of its own.
    docker = [["docker", "run", "--rm"], ["-p", f"{rest_port}:{rest_port}"], ["-p", f"{grpc_port}:{grpc_port}"],
              ["-v", f"{root}:{DOCKER_MOUNT}:ro"], ["--entrypoint", "tensorflow_model_server", DOCKER_IMAGE],
              *([f] for f in server_flags(config, config_file=f"{DOCKER_MOUNT}/{DOCKER_CONFIG_FILENAME}",
                                          batching_file=f"{DOCKER_MOUNT}/{BATCHING_FILENAME}",
                                          rest_port=rest_port, grpc_port=grpc_port))]
    return ServeCommands(_shell_line(local), _shell_line(docker))


def serve_md(root: Path, name: str, version: int, config: ServingConfig, *, source: str,
             rest_port: int = DEFAULT_REST_PORT, grpc_port: int = DEFAULT_GRPC_PORT,
             has_request: bool = False, signature: str = "", copied: bool = False) -> str:
    """SERVE.md: what the bundle holds, how to start TF Serving on it, and what did not carry over."""
    cmds = serve_commands(root, config, rest_port=rest_port, grpc_port=grpc_port)
    url = f"http://localhost:{rest_port}/v1/models/{name}"
    parts = [
        f"# Serving `{name}` with TensorFlow Serving",
        "",
        f"Written by TuneSwarm from {source}.",
        "",
        f"- `{name}/{version}/`: the SavedModel "
        + ("(a copy of the imported SavedModel)" if copied else "(Keras `model.export(format=\"tf_saved_model\")`)")
        + (f"; signature `serving_default`: {signature}" if signature else ""),
        f"- `{BATCHING_FILENAME}`: batching from the TuneSwarm config in `{SERVING_JSON_FILENAME}`",
        f"- `{MODELS_CONFIG_FILENAME}`: base_path `{root / name}` (this folder, where it was written)",
        f"- `{DOCKER_CONFIG_FILENAME}`: base_path `{DOCKER_MOUNT}/{name}` (this folder mounted at `{DOCKER_MOUNT}`)",
        "",
        "## With the tensorflow_model_server binary",
        "",
        "```sh",
        cmds.local,
        "```",
        "",
        f"If you move this folder, edit `base_path` in `{MODELS_CONFIG_FILENAME}`; for docker only the `-v` source "
        "path changes.",
        "",
        "## With docker",
        "",
        "```sh",
        cmds.docker,
        "```",
        "",
        "## Check it",
        "",
        "```sh",
        f"curl -s {url}",
        f"curl -s {url}/metadata",
    ]
    if has_request:
        parts.append(f"curl -s -X POST {url}:predict -d @{REQUEST_FILENAME}")
    parts += ["```", "", "## Not carried over", ""]
    parts += [f"- {note}" for note in own_knobs(config)]
    return "\n".join(parts) + "\n"


# -- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """Where a written bundle's parts are."""

    root: Path
    name: str
    version: int
    saved_model: Path
    batching: Path
    models_config: Path
    docker_config: Path
    serving_config: Path
    serve_md: Path

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def next_version(base: Path) -> int:
    """One more than the highest numeric version folder under ``base`` (1 when there is none)."""
    if not base.is_dir():
        return 1
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(model: keras.Model, target: Path) -> Path:
    """Keras' own SavedModel export into ``target``, atomically (TF Serving polls the base path and
    must never load a half-written version)."""
    import contextlib

    if target.exists():
        raise ValueError(f"{target} already exists; pick another version")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A dot-name TF Serving ignores (not a number) while it is written; renamed when complete.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # export prints the signature; keep stdout for callers
            model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
        os.replace(tmp / "sm", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def copy_saved_model(source: Path, target: Path) -> Path:
    """Copy an imported SavedModel directory into ``target``, atomically like ``export_saved_model``.

    It is already what TF Serving loads, and re-exporting it would need the Keras model it has not
    got; the copy keeps its own ``serving_default`` signature (names, dtypes) exactly.
    """
    if target.exists():
        raise ValueError(f"{target} already exists; pick another version")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        # symlinks=True: a link inside the user's folder is copied as a link, never followed out of it.
        shutil.copytree(source, tmp / "sm", symlinks=True)
        os.replace(tmp / "sm", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _signature_text(model: keras.Model) -> str:
    def spec(t: Any) -> str:
        shape = ", ".join("None" if d is None else str(d) for d in t.shape)
        return f"`{t.name.split(':')[0]}` float32 [{shape}]"

    inputs = ", ".join(spec(t) for t in model.inputs)
    outputs = ", ".join(f"[{', '.join('None' if d is None else str(d) for d in t.shape)}]" for t in model.outputs)
    return f"inputs {inputs} -> `output_0` {outputs}"


def _saved_signature_text(signature: Signature) -> str:
    """The same summary for a SavedModel's own ``serving_default`` (its real names and dtypes)."""

    def spec(t: TensorSpec) -> str:
        return f"`{t.name}` {t.dtype} [None, {', '.join(map(str, t.shape))}]"

    return (f"inputs {', '.join(spec(t) for t in signature.inputs)} -> "
            f"{', '.join(spec(t) for t in signature.outputs)}")


def write_bundle(
    out_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    config: ServingConfig = DEFAULT_CONFIG,
    *,
    name: str = "model",
    version: int | None = None,
    comment: str | None = None,
    source: str | None = None,
    rest_port: int = DEFAULT_REST_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
) -> Bundle:
    """Export ``model_path`` for TF Serving into ``out_dir`` with ``config``'s batching.

    A ``.keras`` file is exported with Keras' own SavedModel export; a SavedModel
    directory (an imported model) is copied as it is. ``version`` defaults to the next
    free number, so re-shipping into the same folder
    adds a version that TF Serving picks up (it serves the highest one).
    """
    from agent.export import check_model_path, is_saved_model, load_model, load_samples, load_servable

    check_model_name(name)
    if version is not None and not 1 <= version < 2**63:
        raise ValueError(f"version must be a positive integer; got {version}")
    for port_name, port in (("rest_port", rest_port), ("grpc_port", grpc_port)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{port_name} must be in 1..65535; got {port}")
    if rest_port == grpc_port:
        raise ValueError(f"rest_port and grpc_port must differ; both are {rest_port}")
    root = Path(out_dir).resolve()
    source_path = check_model_path(model_path)  # raises ModelFormatError (a ValueError) for a bad path
    copied = is_saved_model(source_path)
    if copied:
        # Loaded only to read (and so check) its serving_default signature before anything is written.
        signature = _saved_signature_text(load_servable(source_path).signature)
        if root == source_path.resolve() or root in source_path.resolve().parents:
            raise ValueError(f"the bundle folder {root} must not contain the SavedModel it copies")
        root.mkdir(parents=True, exist_ok=True)
        base = root / name
        version = version or next_version(base)
        saved = copy_saved_model(source_path, base / str(version))
    else:
        model = load_model(source_path)  # safe_mode=True
        signature = _signature_text(model)
        root.mkdir(parents=True, exist_ok=True)
        base = root / name
        version = version or next_version(base)
        saved = export_saved_model(model, base / str(version))
    samples = load_samples(model_path)
    if samples:
        _write(root / REQUEST_FILENAME, json.dumps({"instances": samples[:REQUEST_ROWS]}) + "\n")
    source = source or f"the model {Path(model_path).resolve()}"
    bundle = Bundle(
        root=root, name=name, version=version, saved_model=saved,
        batching=_write(root / BATCHING_FILENAME, tf_serving_batching_text(config, comment=comment)),
        models_config=_write(root / MODELS_CONFIG_FILENAME, models_config_text(name, str(base))),
        docker_config=_write(root / DOCKER_CONFIG_FILENAME, models_config_text(name, f"{DOCKER_MOUNT}/{name}")),
        serving_config=_write(root / SERVING_JSON_FILENAME,
                              json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"),
        serve_md=_write(root / SERVE_MD_FILENAME, serve_md(
            root, name, version, config, source=source, rest_port=rest_port, grpc_port=grpc_port,
            has_request=bool(samples), signature=signature, copied=copied)),
    )
    return bundle


def zip_bundle(root: str | os.PathLike[str]) -> bytes:
    """The bundle folder as zip bytes (paths relative to it), for a download button."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(root).parts))
    total = sum(p.stat().st_size for p in files)
    if total > MAX_ZIP_BYTES:
        raise ValueError(f"bundle is {total / 1e6:.0f} MB; the download limit is {MAX_ZIP_BYTES / 1e6:.0f} MB")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            z.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


# -- CLI ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.tfserving",
        description="Export a trained model for TensorFlow Serving: DIR/<name>/<version>/ SavedModel, "
                    "batching_parameters.txt, models.config and SERVE.md with the command lines.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the training (or imported model) run whose model to export")
    which.add_argument("--model", metavar="PATH", help="a model.keras file to export (loaded with safe_mode=True) "
                                                       "or a SavedModel directory to copy")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the bundle into (created if missing)")
    p.add_argument("--config", metavar="FILE.json",
                   help="TuneSwarm serving config (e.g. a sweep's serving_config.json) for the batching parameters; "
                        "default: the endpoint's defaults")
    p.add_argument("--name", default="model",
                   help="model name in TF Serving's URLs (/v1/models/NAME:predict) and folder; default: model")
    p.add_argument("--version", type=int, help="version folder number; default: one more than the highest present")
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT,
                   help=f"--rest_api_port in the command lines; default: {DEFAULT_REST_PORT}")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                   help=f"--port (gRPC) in the command lines; default: {DEFAULT_GRPC_PORT}")
    p.add_argument("--home", help="state directory for --run-id (default: $TUNESWARM_HOME or .tuneswarm/)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def usage(message: str) -> int:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2

    model_path = args.model
    source = None
    if args.run_id:
        from runs.registry import Registry

        registry = Registry(args.home)
        try:
            run = registry.get_run(args.run_id)
        except KeyError as exc:
            return usage(str(exc.args[0]) if exc.args else f"no run {args.run_id}")
        finally:
            registry.close()
        model_path = run.summary.get("model_path")
        if not model_path:
            return usage(f"run {args.run_id} ({run.kind}, {run.status}) has no model; pick a finished training run")
        source = f"run {run.id} ({run.name})"
    try:
        config = ServingConfig.from_json_file(args.config) if args.config else DEFAULT_CONFIG
        check_model_name(args.name)
        from agent.export import check_model_path

        check_model_path(model_path)
    except (ValueError, OSError) as exc:
        return usage(str(exc).splitlines()[0])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        bundle = write_bundle(args.out, model_path, config, name=args.name, version=args.version, source=source,
                              rest_port=args.rest_port, grpc_port=args.grpc_port)
    except ValueError as exc:
        return usage(str(exc).splitlines()[0])
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {bundle.saved_model}")
    for path in (bundle.batching, bundle.models_config, bundle.docker_config, bundle.serving_config, bundle.serve_md):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
