"""The model sweep's Optuna search: sample the space, prune on validation loss, resume from the study.

Each trial is one point of the model sweep (``model_sweep.measure_model``: train
briefly, serve, one short Locust step). One objective (validation accuracy or
loss) is searched with TPE; the joint objective of accuracy against serving cost
(p99, or server CPU per request) with NSGA-II.

Pruning: after each epoch the trial's validation loss is compared with the
median of earlier trials at the same epoch. A single-objective study does this
through Optuna's ``MedianPruner`` (``trial.report``/``should_prune``); Optuna
refuses ``report`` in multi-objective studies, so there the same median rule
(``median_says_prune``) runs over the loss curves stored on earlier trials. A
pruned trial stops training, is not served, and its train run is recorded
``stopped`` with the reason.

Resuming: the study lives in Optuna's RDB storage, a SQLite file in the sweep's
artifacts (``optuna.db``), named by the run id. A restarted job loads it, marks
trials a killed process left RUNNING as FAIL (they are re-sampled, not counted),
and asks for trials until ``n_trials`` have finished (COMPLETE or PRUNED) or the
finished ones have taken ``timeout_s``. Each finished trial carries its result
row as a user attribute, so the sweep's rows are rebuilt from the study itself.

A sampled point that was measured already (NSGA-II's crossover of two equal
parents, TPE on a small categorical space) is not trained again: the trial is
told the earlier trial's outcome, marked ``duplicate_of``, and not counted.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuning.model_sweep import (
    RANGE_PARAMS,
    SEARCH_OBJECTIVES,
    ModelSweepSpec,
    SweepContext,
    combo_key,
    measure_model,
    parse_hidden,
    record_rows,
)

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"
OPTUNA_MISSING = ("the Optuna search needs optuna: pip install 'tuneswarm[optuna]' (or 'optuna>=4,<6'), "
                  "or use --search grid")
# Median pruning: trials needed before any is pruned, and epochs always trained.
PRUNE_STARTUP_TRIALS = 2
PRUNE_WARMUP_EPOCHS = 0
ROW_ATTR, CURVE_ATTR, DUPLICATE_ATTR = "row", "val_loss_curve", "duplicate_of"
# A sampler that keeps proposing measured points has exhausted a small space: stop after this many in a row.
MAX_DUPLICATES_IN_A_ROW = 20
FINISHED = ("COMPLETE", "PRUNED")


def require_optuna() -> Any:
    """The optuna module, or a one-line ``RuntimeError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError(OPTUNA_MISSING) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(registry: Any, run_id: str) -> str:
    folder = registry.artifacts_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / STUDY_FILE}"


def directions(spec: ModelSweepSpec) -> list[str]:
    return ["maximize" if sense == "max" else "minimize" for _, sense in SEARCH_OBJECTIVES[spec.objective]]


def make_sampler(spec: ModelSweepSpec, n_existing: int) -> Any:
    """TPE for one objective, NSGA-II for two; random start-up sized to the budget.

    The seed moves with the trials already in the study: a resumed job must not
    replay the first random draws and re-train points it has already measured.
    """
    optuna = require_optuna()
    seed = spec.seed + n_existing
    if len(SEARCH_OBJECTIVES[spec.objective]) == 1:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, spec.n_trials // 3)))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, spec.n_trials // 2)))


def open_study(spec: ModelSweepSpec, storage: str, study_name: str) -> optuna.Study:
    """Create the study, or load it when this run made one before (a resumed job)."""
    optuna = require_optuna()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=PRUNE_WARMUP_EPOCHS)
    study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                directions=directions(spec), pruner=pruner)
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    return study


def fail_abandoned(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a killed process FAIL (so they are neither counted nor resumed)."""
    optuna = require_optuna()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return [t.number for t in running]


@dataclass(frozen=True)
class Progress:
    """Where a study stands against its budgets."""

    finished: int  # COMPLETE + PRUNED trials
    spent_s: float  # wall time of the finished trials
    rows: list[dict[str, Any]]  # their result rows, in trial order


def progress(trials: Sequence[Any]) -> Progress:
    """Budget bookkeeping from a study's trials (FrozenTrial-like: number, state, user_attrs, datetimes)."""
    done = sorted((t for t in trials if t.state.name in FINISHED and DUPLICATE_ATTR not in t.user_attrs),
                  key=lambda t: t.number)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done
                if t.datetime_complete is not None and t.datetime_start is not None)
    rows = [{**t.user_attrs[ROW_ATTR], "trial": t.number, "state": t.state.name.lower()} for t in done
            if ROW_ATTR in t.user_attrs]
    return Progress(len(done), spent, rows)


def budget_left(spec: ModelSweepSpec, p: Progress) -> str | None:
    """None while another trial may start; otherwise why not."""
    if p.finished >= spec.n_trials:
        return f"trial budget reached ({p.finished} of {spec.n_trials})"
    if spec.timeout_s and p.spent_s >= spec.timeout_s:
        return f"time budget reached ({p.spent_s:.0f}s of {spec.timeout_s:g}s; {p.finished} trials)"
    return None


def measured_as(trials: Sequence[Any], key: str) -> Any | None:
    """The finished, measured trial whose point has this key, if any (so a repeat is not trained again)."""
    for t in trials:
        if t.state.name in FINISHED and DUPLICATE_ATTR not in t.user_attrs and \
                t.user_attrs.get(ROW_ATTR, {}).get("key") == key:
            return t
    return None


def median_says_prune(value: float, epoch: int, curves: Sequence[Sequence[float]], *,
                      startup: int = PRUNE_STARTUP_TRIALS, warmup: int = PRUNE_WARMUP_EPOCHS) -> bool:
    """MedianPruner's rule for a loss: prune when ``value`` at ``epoch`` (1-based) is above the median of the
    finished curves that reached that epoch (once ``startup`` curves exist and past ``warmup`` epochs)."""
    if len(curves) < startup or epoch <= warmup:
        return False
    at = [c[epoch - 1] for c in curves if len(c) >= epoch]
    return bool(at) and value > statistics.median(at)


def suggest(trial: optuna.Trial, spec: ModelSweepSpec) -> dict[str, Any]:
    """One point of the space: categorical for lists, (log-)uniform for ranges."""
    params: dict[str, Any] = {}
    for name, values in spec.grid.items():
        if name == "hidden":  # Optuna's choices must be scalars: layers as "64x64"
            choice = trial.suggest_categorical(name, ["x".join(map(str, v)) or "0" for v in values])
            params[name] = parse_hidden(choice)
        else:
            params[name] = trial.suggest_categorical(name, list(values))
    for name, (lo, hi) in spec.ranges.items():
        kind, log = RANGE_PARAMS[name]
        if kind is int:
            params[name] = trial.suggest_int(name, int(lo), int(hi), log=log)
        else:
            params[name] = trial.suggest_float(name, lo, hi, log=log)
    return params


class Pruning:
    """Per-trial pruning on validation loss: the decision, and the Keras callback that applies it."""

    def __init__(self, ctx: SweepContext, trial: optuna.Trial, curves: Sequence[Sequence[float]]) -> None:
        self.ctx, self.trial, self.curves = ctx, trial, curves
        self.single = len(SEARCH_OBJECTIVES[ctx.spec.objective]) == 1
        self.curve: list[float] = []
        self.pruned_at: int | None = None

    def should_prune(self, epoch: int, val_loss: float) -> bool:
        """After ``epoch`` (1-based). Never after the last: the training is done, only the swarm would be saved,
        and the model is as trained as its peers."""
        self.curve.append(val_loss)
        last = epoch >= self.ctx.spec.epochs
        if self.single:
            self.trial.report(val_loss, epoch)
            return not last and self.trial.should_prune()
        return not last and median_says_prune(val_loss, epoch, self.curves)

    def callbacks(self, train_id: str) -> list[Any]:
        import keras

        from runs.registry import State

        pruning, registry = self, self.ctx.registry

        class PruneOnValLoss(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                value = logs.get("val_loss")
                if value is None or pruning.pruned_at is not None:
                    return
                if pruning.should_prune(epoch + 1, float(value)):
                    pruning.pruned_at = epoch + 1
                    self.model.stop_training = True
                    # Recorded now, so the train run's own "completed" at the end does not overwrite it.
                    registry.finish_if_active(train_id, State.STOPPED,
                                              f"pruned by the search after epoch {epoch + 1}: val_loss "
                                              f"{float(value):.4g} above the median of earlier trials")

        return [PruneOnValLoss()]


def objective_values(spec: ModelSweepSpec, row: Mapping[str, Any]) -> list[float]:
    values = []
    for metric, _ in SEARCH_OBJECTIVES[spec.objective]:
        value = row.get(metric)
        if value is None:
            hint = "; use --search-objective loss for a regression dataset" if metric == "val_accuracy" else ""
            raise ValueError(f"objective {spec.objective}: the trial measured no {metric}{hint}")
        values.append(float(value))
    return values


def run_search(ctx: SweepContext) -> Progress:
    """Ask, measure and tell trials until a budget is reached; the rows go to the sweep's summary as they finish."""
    optuna = require_optuna()
    from tuning.sweep import SweepStopped

    TrialState = optuna.trial.TrialState
    spec, registry = ctx.spec, ctx.registry
    study = open_study(spec, storage_url(registry, ctx.run_id), ctx.run_id)
    abandoned = fail_abandoned(study)
    if abandoned:
        registry.update_summary(ctx.run_id, {"optuna_failed_on_resume": abandoned})
    registry.update_summary(ctx.run_id, {"optuna": {"storage": storage_url(registry, ctx.run_id),
                                                    "study": ctx.run_id, "sampler": type(study.sampler).__name__,
                                                    "directions": directions(spec)}})
    repeats = 0
    while True:
        state = progress(study.get_trials(deepcopy=False))
        record_rows(ctx, state.rows)
        reason = budget_left(spec, state)
        if reason is None and repeats >= MAX_DUPLICATES_IN_A_ROW:
            reason = f"the sampler proposed only measured points {repeats} times in a row: the space is exhausted"
        if reason is not None:
            registry.set_progress(ctx.run_id, {"phase": "done", "done": state.finished, "total": spec.size,
                                               "note": reason})
            return state
        ctx.stop.check()
        trial = study.ask()
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        curves = [t.user_attrs[CURVE_ATTR] for t in finished if CURVE_ATTR in t.user_attrs]
        pruning = Pruning(ctx, trial, curves)
        try:
            params = suggest(trial, spec)
            earlier = measured_as(finished, combo_key(params))
            if earlier is not None:  # told what that point gave, not trained again, not counted
                repeats += 1
                trial.set_user_attr(DUPLICATE_ATTR, earlier.number)
                study.tell(trial, earlier.values, state=earlier.state)
                continue
            repeats = 0
            row = measure_model(ctx, params, trial.number, callbacks=pruning.callbacks,
                                pruned=lambda p=pruning: p.pruned_at is not None, done=state.finished)
            trial.set_user_attr(CURVE_ATTR, pruning.curve)
            trial.set_user_attr(ROW_ATTR, {**row, "key": combo_key(params)})
            if row["state"] == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, objective_values(spec, row))
        except (SweepStopped, Exception):
            # Stopped or broken mid-trial: FAIL it now (a resumed study re-samples instead), then let it rise.
            study.tell(trial, state=TrialState.FAIL)
            raise
