"""The ``tuneswarm`` command: one entry point over the existing ``python -m`` mains.

``tuneswarm train|serve|swarm|tune ARGS`` runs ``python -m agent.training|agent.serving|
loadtest|tuning ARGS`` in this process (same flags, same exit codes); ``tuneswarm app``
starts the dashboard with Streamlit. Each subcommand takes ``--help`` and ``--version``.
The subcommand's module is imported only when it runs, so ``tuneswarm --version`` and
``tuneswarm app`` never wait for TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneswarm import __version__

DEFAULT_PORT = 8501


@dataclass(frozen=True)
class Command:
    module: str  # the module whose ``main(argv) -> int`` does the work
    help: str


COMMANDS: dict[str, Command] = {
    "app": Command("tuneswarm.cli", "start the dashboard (Streamlit) on http://127.0.0.1:8501"),
    "train": Command("agent.training", "train a model and record it in the run registry (python -m agent.training)"),
    "serve": Command("agent.serving.__main__", "serve a model from the embedded TF-Serving-compatible endpoint "
                     "(python -m agent.serving)"),
    "swarm": Command("loadtest.__main__", "swarm an endpoint with Locust, with SLO gates (python -m loadtest)"),
    "tune": Command("tuning.__main__", "sweep serving or model parameters and recommend one (python -m tuning)"),
}


def version_text() -> str:
    return f"tuneswarm {__version__}"


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tuneswarm",
        description="Tune deep-learning inference under high concurrency: train, serve, swarm, recommend.",
        epilog="Each command takes --help and --version; `tuneswarm COMMAND --help` lists its flags. "
        "train, serve, swarm and tune also take --mlflow URI: the finished run is logged to that MLflow "
        "tracking store (as MLFLOW_TRACKING_URI does).",
    )
    p.add_argument("--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return p


def _wants_version(args: Sequence[str]) -> bool:
    """``--version`` among the subcommand's own flags (not after a ``--`` that passes arguments on)."""
    head = list(args)[: list(args).index("--")] if "--" in args else list(args)
    return "--version" in head


def take_mlflow(args: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove ``--mlflow URI`` (or ``--mlflow=URI``) from a subcommand's flags; returns the rest and the URI."""
    rest, uri, items = [], None, list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--":
            rest.extend(items[i:])
            break
        if item == "--mlflow":
            if i + 1 >= len(items) or items[i + 1].startswith("-"):
                raise ValueError("--mlflow needs a tracking URI, e.g. --mlflow file:/path/to/mlruns")
            uri, i = items[i + 1], i + 2
            continue
        if item.startswith("--mlflow="):
            uri = item.split("=", 1)[1]
        else:
            rest.append(item)
        i += 1
    return rest, uri


def app_script() -> Path:
    """The dashboard's Streamlit script: ``app.py`` beside the ``dashboard`` package, checkout or installed."""
    dashboard = importlib.util.find_spec("dashboard")
    if dashboard is None or not dashboard.origin:
        raise FileNotFoundError("the dashboard package is not importable")
    path = Path(dashboard.origin).resolve().parent.parent / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"the dashboard's app.py is missing: expected {path}")
    return path


def app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tuneswarm app",
        description="Start the TuneSwarm dashboard with Streamlit, bound to 127.0.0.1.",
        epilog="Arguments after `--` go to `streamlit run` as they are (e.g. -- --server.headless true).",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of the dashboard (default: {DEFAULT_PORT})")
    p.add_argument("--version", action="version", version=version_text())
    return p


def app_argv(argv: Sequence[str]) -> list[str]:
    """The ``streamlit run`` command line ``tuneswarm app ARGS`` stands for."""
    args = list(argv)
    extra = args[args.index("--") + 1:] if "--" in args else []
    own = args[: args.index("--")] if "--" in args else args
    parsed = app_parser().parse_args(own)
    if not 0 < parsed.port < 65536:
        app_parser().error(f"--port must be in 1..65535, got {parsed.port}")
    return [sys.executable, "-m", "streamlit", "run", str(app_script()), "--server.port", str(parsed.port),
            "--server.address", "127.0.0.1", *extra]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        _top_parser().parse_args(args)  # --help, --version, or a one-line usage error (exit 2)
        _top_parser().print_help()
        return 2
    name, rest = args[0], args[1:]
    if _wants_version(rest):
        print(version_text())
        return 0
    if name == "app":
        try:
            command = app_argv(rest)
        except FileNotFoundError as exc:  # a broken install: say what is missing, not a traceback
            print(f"tuneswarm app: error: {exc}", file=sys.stderr)
            return 1
        # Streamlit owns the terminal from here (Ctrl+C, its own logging): replace this process.
        os.execv(command[0], command)
    try:
        rest, uri = take_mlflow(rest)
    except ValueError as exc:
        print(f"tuneswarm {name}: error: {exc}", file=sys.stderr)
        return 2
    if uri:
        # The job (and every job it starts) exports its run to MLflow when it ends: runs.tracking.
        os.environ["MLFLOW_TRACKING_URI"] = uri
    module = importlib.import_module(COMMANDS[name].module)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
