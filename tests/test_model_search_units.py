"""The Optuna search without TensorFlow: space parsing, the spec's checks, budgets, resume bookkeeping, pruning."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from runs.registry import Registry
from tuning.model_sweep import ModelSweepSpec, format_front, parse_space, train_grid, with_front

optuna = pytest.importorskip("optuna")

from tuning import model_search  # noqa: E402  (after the skip: it is only useful with optuna)
from tuning.model_search import (  # noqa: E402
    CURVE_ATTR,
    DUPLICATE_ATTR,
    ROW_ATTR,
    Pruning,
    budget_left,
    fail_abandoned,
    measured_as,
    median_says_prune,
    open_study,
    progress,
    suggest,
)

OPTUNA = ModelSweepSpec(search="optuna", grid={"activation": ["relu", "tanh"]}, n_trials=4,
                        ranges={"width": [4, 64], "depth": [1, 2], "learning_rate": [1e-4, 1e-1]})


def test_the_space_takes_lists_as_choices_and_ranges_for_the_numeric_knobs() -> None:
    grid, ranges = parse_space(["hidden=32,64x64", "activation=relu,tanh", "learning_rate=0.0001..0.1",
                                "depth=1..3"])
    assert grid == {"hidden": [[32], [64, 64]], "activation": ["relu", "tanh"]}
    assert ranges == {"learning_rate": [0.0001, 0.1], "depth": [1, 3]}
    assert parse_space(["width=16,64"]) == ({"width": [16, 64]}, {})
    assert parse_space([])[0] and parse_space([])[1] == {}  # the default grid


@pytest.mark.parametrize(("flags", "message"), [
    (["activation=relu..tanh"], "ranges LO..HI are for learning_rate, width, depth"),
    (["learning_rate=0.1..0.01"], "LO < HI"),
    (["learning_rate=0..0.1"], "0 < LO < HI"),
    (["width=a..b"], "takes two ints"),
    (["width=8,x"], "width takes ints"),
    (["depth=1..2", "depth=3"], "given twice"),
])
def test_a_bad_space_is_one_line_naming_what_was_expected(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_space(flags)


def test_the_grid_refuses_ranges_and_the_spec_checks_the_search() -> None:
    with pytest.raises(ValueError, match="need the Optuna search"):
        train_grid(["learning_rate=0.001..0.1"])
    with pytest.raises(ValueError, match="need the Optuna search"):
        ModelSweepSpec(ranges={"learning_rate": [0.001, 0.1]})
    with pytest.raises(ValueError, match="search must be one of grid, optuna"):
        ModelSweepSpec(search="random")
    with pytest.raises(ValueError, match="objective must be one of"):
        ModelSweepSpec(search="optuna", objective="speed")
    with pytest.raises(ValueError, match=re.escape("n_trials must be 1..200")):
        ModelSweepSpec(search="optuna", n_trials=0)
    with pytest.raises(ValueError, match=r"hidden .* or width/depth, not both"):
        ModelSweepSpec(search="optuna", grid={"hidden": [[8]]}, ranges={"width": [4, 8]})
    with pytest.raises(ValueError, match="activation"):  # every choice is validated up front
        ModelSweepSpec(search="optuna", grid={"activation": ["relu", "nope"]})


def test_an_optuna_spec_round_trips_and_width_depth_make_the_hidden_layers() -> None:
    assert ModelSweepSpec.from_dict(OPTUNA.to_dict()) == OPTUNA
    assert OPTUNA.size == 4  # the trial budget stands for the sweep's size
    assert OPTUNA.model_kwargs({"width": 16, "depth": 2})["hidden"] == (16, 16)
    assert OPTUNA.model_kwargs({"depth": 0})["hidden"] == ()


def test_suggest_samples_inside_the_space_and_hidden_choices_come_back_as_layers() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    spec = ModelSweepSpec(search="optuna", grid={"hidden": [[8], [16, 16], []]},
                          ranges={"learning_rate": [1e-3, 1e-1]})
    for _ in range(10):
        p = suggest(study.ask(), spec)
        assert p["hidden"] in ([8], [16, 16], []) and 1e-3 <= p["learning_rate"] <= 1e-1
    p = suggest(study.ask(), OPTUNA)
    assert 4 <= p["width"] <= 64 and p["depth"] in (1, 2) and p["activation"] in ("relu", "tanh")


def _row(key: str, acc: float, p99: float | None = None) -> dict:
    return {"key": key, "label": key, "val_accuracy": acc, "p99_ms": p99}


def test_a_resumed_study_fails_what_a_killed_process_left_running_and_counts_only_finished_trials(
        tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = open_study(OPTUNA, storage, "run-1")
    t0, t1, t2 = first.ask(), first.ask(), first.ask()
    t0.set_user_attr(ROW_ATTR, _row("a", 0.9, 4.0))
    first.tell(t0, [0.9, 4.0])
    t1.set_user_attr(ROW_ATTR, _row("b", 0.5))
    first.tell(t1, state=optuna.trial.TrialState.PRUNED)
    # t2 stays RUNNING: its process was killed. A new process opens the same study by name.
    again = open_study(OPTUNA, storage, "run-1")
    assert fail_abandoned(again) == [t2.number]
    assert fail_abandoned(again) == []  # idempotent
    state = progress(again.get_trials())
    assert state.finished == 2
    assert [(r["trial"], r["state"], r["key"]) for r in state.rows] == [(0, "complete", "a"), (1, "pruned", "b")]
    assert budget_left(OPTUNA, state) is None  # 2 of 4: keep going; the failed trial is not counted
    assert "trial budget reached" in budget_left(OPTUNA, SimpleNamespace(finished=4, spent_s=0.0))
    timed = ModelSweepSpec(search="optuna", n_trials=4, timeout_s=10)
    assert "time budget reached" in budget_left(timed, SimpleNamespace(finished=1, spent_s=11.0))


def test_a_resumed_sampler_does_not_replay_the_first_draws(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = ModelSweepSpec(search="optuna", objective="accuracy", ranges={"learning_rate": [1e-4, 1e-1]}, n_trials=8)
    first = open_study(spec, storage, "run-2")
    trial = first.ask()
    lr = suggest(trial, spec)["learning_rate"]
    first.tell(trial, 0.5)
    again = open_study(spec, storage, "run-2")  # as a restarted job does
    assert suggest(again.ask(), spec)["learning_rate"] != lr


def test_the_median_rule_prunes_a_loss_above_the_median_of_earlier_trials_at_that_epoch() -> None:
    curves = [[1.0, 0.5], [2.0, 0.7], [3.0]]
    assert median_says_prune(2.5, 1, curves)  # median at epoch 1 is 2.0
    assert not median_says_prune(1.5, 1, curves)
    assert median_says_prune(0.65, 2, curves)  # only the curves that reached epoch 2: median 0.6
    assert not median_says_prune(9.0, 1, curves[:1])  # too few earlier trials to judge
    assert not median_says_prune(9.0, 3, curves)  # nobody reached epoch 3


@pytest.mark.parametrize("objective", ["loss", "accuracy+p99"])
def test_pruning_uses_optunas_median_pruner_alone_and_the_same_rule_jointly(objective: str, tmp_path: Path) -> None:
    spec = ModelSweepSpec(search="optuna", objective=objective, ranges={"learning_rate": [1e-4, 1e-1]})
    study = open_study(spec, f"sqlite:///{tmp_path / 'optuna.db'}", "run-3")
    ctx = SimpleNamespace(spec=spec, registry=None)
    for loss in (1.0, 2.0):  # two finished trials with their curves (the pruner's start-up)
        trial = study.ask()
        p = Pruning(ctx, trial, [])
        assert not p.should_prune(1, loss)
        trial.set_user_attr(CURVE_ATTR, p.curve)
        study.tell(trial, [loss] if objective == "loss" else [0.5, 1.0])
    curves = [t.user_attrs[CURVE_ATTR] for t in study.trials]
    assert Pruning(ctx, study.ask(), curves).should_prune(1, 3.0)
    assert not Pruning(ctx, study.ask(), curves).should_prune(1, 1.2)
    one_epoch = SimpleNamespace(spec=replace(spec, epochs=1), registry=None)
    assert not Pruning(one_epoch, study.ask(), curves).should_prune(1, 9.0)  # never after the last epoch


def test_a_point_measured_before_is_found_and_its_repeat_is_not_counted(tmp_path: Path) -> None:
    study = open_study(OPTUNA, f"sqlite:///{tmp_path / 'optuna.db'}", "run-4")
    t0 = study.ask()
    t0.set_user_attr(ROW_ATTR, _row("width=9", 0.9, 4.0))
    study.tell(t0, [0.9, 4.0])
    earlier = measured_as(study.get_trials(), "width=9")
    assert earlier is not None and earlier.number == 0 and measured_as(study.get_trials(), "width=10") is None
    t1 = study.ask()  # the same point sampled again: told the same outcome, marked, not counted
    t1.set_user_attr(DUPLICATE_ATTR, earlier.number)
    study.tell(t1, earlier.values, state=earlier.state)
    state = progress(study.get_trials())
    assert state.finished == 1 and [r["trial"] for r in state.rows] == [0]
    assert measured_as(study.get_trials(), "width=9").number == 0


def test_the_front_leaves_out_pruned_trials_and_the_cli_lists_it() -> None:
    objectives = {"val_accuracy": "max", "p99_ms": "min"}
    rows = [{**_row("a", 0.9, 4.0), "trial": 0, "state": "complete"},
            {**_row("b", 0.99), "trial": 1, "state": "pruned"},  # best accuracy, never served
            {**_row("c", 0.8, 2.0), "trial": 2, "state": "complete"},
            {**_row("d", 0.7, 5.0), "trial": 3, "state": "complete"}]
    assert [r["on_front"] for r in with_front(rows, objectives)] == [True, False, True, False]
    text = format_front(rows, objectives)
    assert text.splitlines()[0] == "Pareto front (val_accuracy vs p99_ms): 2 of 4 models"
    assert "trial 0: a" in text and "trial 2: c" in text and "trial 1" not in text


def test_without_optuna_the_search_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'tuneswarm\[optuna\]'"):
        model_search.require_optuna()


@pytest.mark.parametrize(("argv", "message"), [
    (["--trials", "3"], "are for --search optuna"),
    (["--search", "optuna", "--trials", "0"], "n_trials must be 1..200"),
    (["--search", "optuna", "--train-grid", "activation=a..b"], "ranges LO..HI are for"),
])
def test_the_cli_refuses_a_bad_search_with_exit_2_and_one_line(argv: list[str], message: str, home: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tuning.__main__ import main

    assert main(["--mode", "models", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not Registry(home).list_runs()
