"""``python -m tuning``: sweep serving configs (or models) under load and recommend one.

Serving sweep, in the foreground::

    python -m tuning --model PATH/model.keras --grid max_batch_size=1,8,32 --grid batch_timeout_ms=0,2 \\
        --users 1,8,32,64 --slo 'p95<=50ms' --objective throughput --out DIR

Model sweep (train each briefly, then load-test it)::

    python -m tuning --mode models --dataset digits --train-grid hidden=32,64x64 \\
        --train-grid learning_rate=0.001,0.01 --epochs 3 --users 16 --slo 'p99<=100ms' --out DIR

Model search on Optuna (ranges LO..HI; TPE for one objective, NSGA-II for accuracy vs cost;
pruning on validation loss; resumable with --run-id)::

    python -m tuning --mode models --search optuna --trials 16 --timeout-s 600 --search-objective accuracy+p99 \
        --train-grid width=8..128 --train-grid depth=1..2 --train-grid learning_rate=0.0003..0.03 --epochs 2

Capacity sweep of an endpoint that is already running (any URL, nothing restarted)::

    python -m tuning --host http://127.0.0.1:8600 --model-name digits --protocol v2 \
        --users 1,8,32,64 --slo 'p95<=50ms'

records the latency-throughput curve, its knee and the highest load within SLO.

As a job (the dashboard does this): ``python -m tuning --run-id ID`` runs, or resumes,
the sweep stored in that registry run; with ``--out DIR`` it writes the same files
there as an uninterrupted run. A sweep run from flags is recorded the same way and
runs in the foreground; SIGTERM/SIGINT/SIGHUP stop it (what was measured is kept
and recommended from), and its endpoints and Locust steps die with it.

Ship the recommendation to TensorFlow Serving: add ``--export-tfserving DIR`` to a
serving sweep, or give it with ``--run-id ID`` of a finished sweep (which is then
only exported, not re-run). DIR gets ``model/<version>/`` (SavedModel),
``batching_parameters.txt``, ``models.config`` and ``SERVE.md``.

Exit codes: 0 a config met the constraints, 1 none did (the closest is named) or
the sweep did not complete, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from tuning.ladder import MIN_THROUGHPUT_GAIN
    from tuning.model_sweep import DEFAULT_OBJECTIVE, DEFAULT_TRIALS, SEARCH_OBJECTIVES, SEARCHES
    from tuning.recommend import DEFAULT_SLOS, OBJECTIVES
    from tuning.space import PARAM_TYPES, STRATEGIES
    from tuning.sweep import DEFAULT_STEP_S

    p = argparse.ArgumentParser(
        prog="python -m tuning",
        description="Sweep serving configs (or models) up a concurrency ladder and recommend one under SLOs.",
    )
    p.add_argument("--run-id", help="run (or resume) the sweep stored in this registry run; other flags are ignored")
    p.add_argument("--mode", choices=("serving", "models"), default="serving",
                   help="serving: sweep endpoint parameters for one model (default); models: train a grid of "
                        "models and weigh accuracy against latency and capacity")
    p.add_argument("--model", help="serving mode: the model to serve, a .keras file or a SavedModel directory "
                   "(the samples.json beside it is the payload; a model without one is imported first and "
                   "gets rows generated from its signature)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help=f"serving values to sweep (repeatable); NAME one of {', '.join(PARAM_TYPES)}")
    p.add_argument("--base-config", metavar="FILE.json",
                   help="serving config for the knobs the grid leaves alone (default: the endpoint's defaults)")
    p.add_argument("--users", default="1,8,32,64",
                   help="the concurrency ladder: rising user counts, one short Locust step each (default: 1,8,32,64)")
    p.add_argument("--rates", metavar="R1,R2,...",
                   help="open-loop ladder instead of --users: rising offered requests/s (Locust's rate shape), "
                        "so overload shows as shed requests and latency rather than being hidden by waiting users")
    p.add_argument("--slo", action="append", default=None, metavar="EXPR",
                   help=f"constraint (repeatable), e.g. 'p95<=50ms', 'p99<=100ms', 'fail_ratio<=0.01', 'rps>=500' "
                        f"(default: {' '.join(DEFAULT_SLOS)})")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput",
                   help="throughput: most req/s within SLO; latency: lowest latency at --at-users; "
                        "cpu: least server CPU per request (default: throughput)")
    p.add_argument("--at-users", type=int, help="latency objective: the load level to compare at "
                                                 "(default: the highest level every config reached)")
    p.add_argument("--strategy", choices=STRATEGIES, default="grid",
                   help="grid: every combination; coordinate: one parameter at a time (cheaper) (default: grid)")
    p.add_argument("--step-s", type=float, default=DEFAULT_STEP_S,
                   help=f"seconds of load per ladder step (default: {DEFAULT_STEP_S:g})")
    p.add_argument("--min-gain", type=float, default=MIN_THROUGHPUT_GAIN,
                   help=f"stop climbing when a step adds less than this throughput fraction "
                        f"(default: {MIN_THROUGHPUT_GAIN:g}, Model Analyzer's 5%%)")
    p.add_argument("--verify-top", type=int, default=2,
                   help="after the search, re-measure this many best configs and batching off back to back and "
                        "recommend from that pass (0: off) (default: 2)")
    p.add_argument("--patience", type=int, default=1, help="low-gain steps in a row before stopping (default: 1)")
    p.add_argument("--instances-per-request", type=int, default=1, help="feature rows per request (default: 1)")
    p.add_argument("--processes", type=int, default=0,
                   help="Locust processes per step (0: one; see python -m loadtest --help) (default: 0)")
    p.add_argument("--out", metavar="DIR", help="write serving_config.json, batching_parameters.txt, "
                                                "recommendation.json and points.json here")
    p.add_argument("--name", help="name of the sweep run in the registry")
    p.add_argument("--export-tfserving", metavar="DIR",
                   help="serving sweeps: write the recommended config as a TensorFlow Serving bundle into DIR "
                        "(SavedModel, batching_parameters.txt, models.config, SERVE.md); with --run-id of a finished "
                        "sweep, only export it")
    c = p.add_argument_group("capacity sweep of a running endpoint (--host)")
    c.add_argument("--host", metavar="URL", help="sweep this running endpoint's capacity up the --users (or --rates) "
                   "ladder instead of serving a model; nothing is restarted (e.g. http://127.0.0.1:8600)")
    c.add_argument("--model-name", default="model", help="the model's name at --host (default: model)")
    c.add_argument("--protocol", default="tfserving", choices=("tfserving", "v2"),
                   help="tfserving: TF Serving's REST API; v2: the Open Inference Protocol (Triton, KServe, "
                        "MLServer) (default: tfserving)")
    c.add_argument("--samples", default="", help="payload rows (as python -m loadtest --samples); default: rows "
                   "generated from the target's own metadata")
    c.add_argument("--signature", default="", metavar="FILE",
                   help="signature.json with the model's inputs, for a target whose metadata cannot be read "
                        "(default: read them from the target)")
    c.add_argument("--all-levels", action="store_true",
                   help="measure every level, even past one that broke the SLO (the whole curve)")
    g = p.add_argument_group("model sweep (--mode models)")
    g.add_argument("--dataset", default="digits", help="built-in dataset to train on (default: digits)")
    g.add_argument("--train-grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="training values to sweep (repeatable): hidden=32,64x64 (layers joined by x), "
                        "width=16,64 and depth=1,2 (hidden = [width] * depth), "
                        "activation=relu,tanh, learning_rate=0.001,0.01, runtime=keras,tflite, family=mlp,rnn, "
                        "rnn_cell=gru,lstm, weight_init=he_normal,glorot_uniform, bias_init=zeros,constant; with "
                        "--search optuna also ranges LO..HI for learning_rate, width, depth")
    g.add_argument("--epochs", type=int, default=3, help="epochs per model (keep it small) (default: 3)")
    g.add_argument("--search", choices=SEARCHES, default="grid",
                   help="grid: every combination of the lists (small discrete spaces); optuna: sample the space "
                        "(lists are choices, LO..HI ranges for learning_rate, width, depth) with TPE or NSGA-II, "
                        "pruning on validation loss (default: grid)")
    g.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help=f"optuna: finished trials to reach (complete or pruned) (default: {DEFAULT_TRIALS})")
    g.add_argument("--timeout-s", type=float, default=0.0,
                   help="optuna: start no trial once the finished ones took this many seconds (default: 0, none)")
    g.add_argument("--search-objective", choices=tuple(SEARCH_OBJECTIVES), default=DEFAULT_OBJECTIVE,
                   help="optuna: what to optimise; accuracy or loss alone (TPE), or accuracy against p99 or "
                        f"server CPU per request (NSGA-II) (default: {DEFAULT_OBJECTIVE})")
    return p


def _fail_usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed a one-line usage error (or --help)
        return int(exc.code or 0) and EXIT_USAGE
    from runs import lifecycle
    from runs.registry import Registry

    registry = Registry()
    try:
        with lifecycle.foreground():  # the endpoints and Locust steps it starts die with it
            if args.run_id and args.export_tfserving:
                run = registry.get_run(args.run_id)
                finished = run.status in ("completed", "stopped", "failed")
                code = EXIT_OK if finished else _run_job(registry, args.run_id, args.out)
                return _ship(registry, args.run_id, args.export_tfserving) or code
            if args.run_id:
                return _run_job(registry, args.run_id, args.out)
            if args.host:
                return _capacity(registry, args)
            if args.mode == "models":
                if args.export_tfserving:
                    raise UsageError("--export-tfserving ships a serving sweep's recommendation; for a model use "
                                     "python -m agent.tfserving --run-id ID --out DIR")
                return _models(registry, args)
            return _serving(registry, args)
    except UsageError as exc:
        return _fail_usage(str(exc))
    except KeyError as exc:
        return _fail_usage(str(exc.args[0]) if exc.args else str(exc))
    except KeyboardInterrupt:
        print("error: interrupted before the sweep started", file=sys.stderr)
        return EXIT_FAILED


def _common(args: argparse.Namespace) -> dict:
    from tuning.ladder import parse_levels
    from tuning.recommend import DEFAULT_SLOS

    try:
        users = parse_levels(args.users)
        rates = parse_levels(args.rates, what="rates") if getattr(args, "rates", None) else ()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {"users": users, "rates": rates, "slos": tuple(args.slo or DEFAULT_SLOS), "objective": args.objective,
            "step_s": args.step_s, "min_gain": args.min_gain, "patience": args.patience, "at_users": args.at_users,
            "instances_per_request": args.instances_per_request, "processes": args.processes,
            "verify_top": args.verify_top}


def _serving(registry, args: argparse.Namespace) -> int:
    from agent.export import ModelFormatError, check_model_path
    from agent.serving.config import DEFAULT_CONFIG, ServingConfig
    from tuning.space import SearchSpace
    from tuning.sweep import SweepSpec, create_sweep

    if not args.model:
        raise UsageError("--model PATH (.keras or SavedModel directory) is required for a serving sweep")
    try:
        model = check_model_path(args.model)
    except (ModelFormatError, ValueError, OSError) as exc:
        raise UsageError(f"--model: {exc}") from None
    if not args.grid:
        raise UsageError("give at least one --grid NAME=V1,V2 (e.g. --grid max_batch_size=1,8,32)")
    try:
        space = SearchSpace.parse(args.grid)
        base = ServingConfig.from_json_file(args.base_config) if args.base_config else DEFAULT_CONFIG
        spec = SweepSpec(model_path=str(model), space=space.to_dict(), strategy=args.strategy, base=base.to_dict(),
                         **_common(args))
        for params in _all_params(space):
            spec.serving_config(params)  # every grid point must be a valid endpoint config
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not (model.parent / "samples.json").exists():
        # A user's own model: import it (a registry run with its signature and payload rows
        # generated from it), then sweep the imported copy like a trained model.
        from tuning.imports import ImportRefusedError, import_model

        try:
            imported = import_model(registry, model)
        except ImportRefusedError as exc:
            raise UsageError(f"--model: {exc}") from None
        print(f"imported {model} as run {imported.run_id} (no samples.json beside it: payload rows "
              "generated from its signature)", flush=True)
        spec = replace(spec, model_path=str(imported.model_path))
    run_id = create_sweep(registry, spec, name=args.name)
    ladder = f"{list(spec.rates)} req/s offered" if spec.open_loop else f"{list(spec.users)} users"
    print(f"sweep {run_id}: {space.size} configs on the grid, ladder {ladder}, "
          f"{spec.step_s:g}s per step, SLO {' and '.join(spec.slos)}", flush=True)
    status = _execute(registry, run_id)
    code = _report(registry, run_id, status, args.out)
    if args.export_tfserving:
        return _ship(registry, run_id, args.export_tfserving) or code
    return code


def _capacity(registry, args: argparse.Namespace) -> int:
    from tuning.capacity import CapacitySpec, create_capacity_sweep

    if args.model or args.grid or args.export_tfserving:
        raise UsageError("--host sweeps a running endpoint as it is: drop --model, --grid and --export-tfserving")
    common = _common(args)
    try:
        spec = CapacitySpec(host=args.host, model_name=args.model_name, protocol=args.protocol,
                            users=common["users"], rates=common["rates"], slos=common["slos"],
                            step_s=common["step_s"], instances_per_request=common["instances_per_request"],
                            processes=common["processes"], samples_path=args.samples,
                            signature_path=args.signature, climb_all=args.all_levels)
        if spec.protocol == "v2" or not spec.samples_path:
            from tuning.capacity import target_inputs

            target_inputs(spec)  # a target whose signature cannot be read is bad usage, before any run
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    run_id = create_capacity_sweep(registry, spec, name=args.name)
    ladder = f"{list(spec.rates)} req/s offered" if spec.open_loop else f"{list(spec.users)} users"
    print(f"capacity sweep {run_id}: {args.model_name} at {args.host} ({args.protocol}), ladder {ladder}, "
          f"{spec.step_s:g}s per step, SLO {' and '.join(spec.slos)}", flush=True)
    return _report_capacity(registry, run_id, _execute_capacity(registry, run_id), args.out)


def _execute_capacity(registry, run_id: str) -> str:
    from runs.lifecycle import one_line_error
    from tuning.sweep import execute

    try:
        return execute(registry, run_id, on_point=_print_point)
    except ValueError as exc:  # e.g. the target's metadata could not be read: one line naming the flag
        print(f"error: {exc}", file=sys.stderr)
        return registry.get_run(run_id).status
    except Exception as exc:
        print(f"error: {one_line_error(exc)}", file=sys.stderr)
        return registry.get_run(run_id).status


def _report_capacity(registry, run_id: str, status: str, out: str | None) -> int:
    from tuning.points import points_to_json
    from tuning.recommend import Constraints, format_table
    from tuning.sweep import load_points

    run = registry.get_run(run_id)
    points = load_points(registry, run_id)
    if points:
        print()
        print(format_table(points, Constraints.parse(run.config["spec"]["slos"])))
        print()
    verdict = run.summary.get("verdict") or {}
    for line in verdict.get("explanation", []):
        print(line)
    if status != "completed":
        print(f"capacity sweep {status}: {run.error or ''}".rstrip(": "))
    if out:
        import json

        from runs.configs import atomic_write_text

        print(f"wrote {atomic_write_text(Path(out) / 'points.json', points_to_json(points))}")
        print(f"wrote {atomic_write_text(Path(out) / 'capacity.json', json.dumps(verdict, indent=1))}")
    if status != "completed":
        return EXIT_FAILED
    return EXIT_OK if verdict.get("capacity") else EXIT_FAILED


def _ship(registry, run_id: str, out: str) -> int:
    """Write the sweep's TF Serving bundle; 0, or the exit code of the failure (its line printed)."""
    from tuning.ship import ship_sweep

    try:
        bundle = ship_sweep(registry, run_id, out)
    except ValueError as exc:
        print(f"error: --export-tfserving: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: --export-tfserving: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote TF Serving bundle {bundle.root} ({bundle.name}/{bundle.version}); see {bundle.serve_md}")
    return EXIT_OK


def _execute(registry, run_id: str) -> str:
    """Run the recorded sweep in this process as its job; a failure is recorded and printed, not raised."""
    from runs.lifecycle import one_line_error
    from tuning.sweep import execute

    try:
        return execute(registry, run_id, on_point=_print_point)
    except Exception as exc:
        print(f"error: {one_line_error(exc)}", file=sys.stderr)
        return registry.get_run(run_id).status


def _all_params(space) -> list[dict]:
    from tuning.space import grid

    return grid(space)


def _print_point(point) -> None:
    p95 = "n/a" if point.p95_ms is None else f"{point.p95_ms:.1f} ms"
    print(f"  {point.label:<24} {point.load_text:>18}  {point.rps:8.1f} req/s  p95 {p95}  "
          f"fail {point.fail_ratio:.1%}", flush=True)


def _report(registry, run_id: str, status: str, out: str | None) -> int:
    from tuning.exports import write_exports
    from tuning.points import points_to_json
    from tuning.recommend import format_table
    from tuning.sweep import SweepSpec, load_points

    run = registry.get_run(run_id)
    spec = SweepSpec.from_dict(run.config["spec"])
    points = load_points(registry, run_id)
    rec = run.summary.get("recommendation") or {}
    print()
    print(format_table(points, spec.constraints()))
    print()
    for line in rec.get("explanation", []):
        print(line)
    if status != "completed":
        print(f"sweep {status}: {run.error or ''}".rstrip(": "))
    if out:
        from runs.configs import atomic_write_text

        out_dir = Path(out)
        print(f"wrote {atomic_write_text(out_dir / 'points.json', points_to_json(points))}")
        if run.summary.get("recommended_config"):
            from agent.serving.config import ServingConfig

            paths = write_exports(out_dir, ServingConfig.from_dict(run.summary["recommended_config"]),
                                  recommendation=rec)
            for path in paths.values():
                print(f"wrote {path}")
    if not rec.get("met"):
        return EXIT_FAILED
    return EXIT_OK if status == "completed" else EXIT_FAILED


def _models(registry, args: argparse.Namespace) -> int:
    from tuning.model_sweep import (
        DEFAULT_OBJECTIVE,
        DEFAULT_TRIALS,
        ModelSweepSpec,
        create_model_sweep,
        parse_space,
    )

    if args.search == "grid" and (args.trials != DEFAULT_TRIALS or args.timeout_s
                                  or args.search_objective != DEFAULT_OBJECTIVE):
        raise UsageError("--trials, --timeout-s and --search-objective are for --search optuna; the grid trains "
                         "every combination")
    try:
        grid_values, ranges = parse_space(args.train_grid)
        common = _common(args)
        if common["rates"]:
            raise UsageError("--rates is for serving sweeps; a model sweep uses one --users level")
        common.pop("verify_top")
        spec = ModelSweepSpec(dataset=args.dataset, grid=grid_values, epochs=args.epochs,
                              users=common["users"][-1], step_s=common["step_s"], slos=common["slos"],
                              search=args.search, ranges=ranges, n_trials=args.trials, timeout_s=args.timeout_s,
                              objective=args.search_objective)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if spec.search == "optuna":
        from tuning.model_search import require_optuna

        try:
            require_optuna()
        except RuntimeError as exc:
            raise UsageError(str(exc)) from None
    run_id = create_model_sweep(registry, spec, name=args.name)
    what = (f"Optuna search of {spec.n_trials} trials ({spec.objective})" if spec.search == "optuna"
            else f"{spec.size} models")
    print(f"model sweep {run_id}: {what}, {spec.epochs} epochs each, "
          f"{spec.users} users for {spec.step_s:g}s each", flush=True)
    return _report_models(registry, run_id, _execute(registry, run_id), args.out)


def _report_models(registry, run_id: str, status: str, out: str | None) -> int:
    import json

    from runs.configs import atomic_write_text
    from tuning.model_sweep import ModelSweepSpec, format_front, format_models, front_objectives

    run = registry.get_run(run_id)
    objectives = front_objectives(ModelSweepSpec.from_dict(run.config["spec"]))
    rows = run.summary.get("models", [])
    print(format_models(rows, objectives))
    print()
    print(format_front(rows, objectives))
    note = (run.progress or {}).get("note")
    if note:
        print(note)
    if status != "completed":
        print(f"model sweep {status}: {run.error or ''}".rstrip(": "))
    if out:
        path = atomic_write_text(Path(out) / "models.json", json.dumps(run.summary.get("models", []), indent=1))
        print(f"wrote {path}")
    return EXIT_OK if status == "completed" else EXIT_FAILED


def _run_job(registry, run_id: str, out: str | None) -> int:
    """Run or resume a recorded sweep; the same report and --out files as a sweep run from flags."""
    run = registry.get_run(run_id)
    if run.kind != "sweep":
        raise UsageError(f"run {run_id} is a {run.kind} run, not a sweep")
    if run.config.get("mode") not in ("serving", "models", "capacity"):
        raise UsageError(f"run {run_id} is a {run.config.get('mode')} run; only serving, model and capacity "
                         "sweeps resume")
    if run.active and run.pid is not None and run.pid != os.getpid():
        from runs.jobs import is_alive

        if is_alive(run):
            raise UsageError(f"sweep {run_id} is running already (pid {run.pid})")
    if run.config.get("mode") == "capacity":
        status = run.status if run.status == "completed" else _execute_capacity(registry, run_id)
        return _report_capacity(registry, run_id, status, out)
    done = len(run.summary.get("points") or run.summary.get("models") or [])
    if run.status == "completed":  # nothing to resume: report it (and write --out) as it ended
        print(f"sweep {run_id}: completed with {done} points", flush=True)
        status = run.status
    else:
        print(f"sweep {run_id}: {'resuming with ' + str(done) + ' points measured' if done else 'starting'}",
              flush=True)
        status = _execute(registry, run_id)
    if run.config.get("mode") == "models":
        return _report_models(registry, run_id, status, out)
    return _report(registry, run_id, status, out)


if __name__ == "__main__":
    sys.exit(main())
