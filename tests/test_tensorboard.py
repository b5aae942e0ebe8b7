"""TensorBoard event files beside a training run's artifacts, read back with TensorFlow's own summary reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.data import DataSource
from agent.model import ModelConfig
from agent.training import TENSORBOARD_DIR, TrainJob, build_parser, job_from_args, train
from runs.registry import Registry

pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")


def epoch_scalars(logdir: Path, tag: str = "epoch_loss") -> dict[int, float]:
    """``{epoch: value}`` of one scalar from the event files in ``logdir``."""
    import tensorflow as tf

    values: dict[int, float] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return values


def test_a_training_run_writes_its_per_epoch_loss_for_tensorboard(registry: Registry) -> None:
    result = train(ModelConfig(hidden=(16,), epochs=3, batch_size=64, seed=2), DataSource("iris"), registry)
    logdir = registry.artifacts_dir(result.run_id) / TENSORBOARD_DIR
    assert registry.get_run(result.run_id).summary["tensorboard"] == {"logdir": str(logdir)}
    train_loss = epoch_scalars(logdir / "train")
    val_loss = epoch_scalars(logdir / "validation")
    assert sorted(train_loss) == sorted(val_loss) == [0, 1, 2]
    for epoch, row in enumerate(result.history):
        assert train_loss[epoch] == pytest.approx(row["loss"], rel=1e-5)
        assert val_loss[epoch] == pytest.approx(row["val_loss"], rel=1e-5)


def test_the_tape_loop_writes_them_too_and_the_switch_turns_them_off(registry: Registry) -> None:
    tape = ModelConfig(hidden=(), mode="tape", output_activation="tanh", learning_rate=0.3, epochs=2, batch_size=64)
    result = train(tape, DataSource("synthetic", synthetic_activation="tanh"), registry)
    assert sorted(epoch_scalars(registry.artifacts_dir(result.run_id) / TENSORBOARD_DIR / "train")) == [0, 1]

    off = train(ModelConfig(hidden=(8,), epochs=1), DataSource("iris"), registry, tensorboard=False)
    assert not (registry.artifacts_dir(off.run_id) / TENSORBOARD_DIR).exists()
    assert "tensorboard" not in registry.get_run(off.run_id).summary


def test_the_switch_travels_in_the_job_config_not_the_model_config() -> None:
    job = job_from_args(build_parser().parse_args(["--dataset", "iris", "--no-tensorboard"]))
    assert job.tensorboard is False
    assert "tensorboard" not in job.model.to_dict()
    assert TrainJob.from_dict(job.to_dict()) == job
    assert TrainJob.from_dict({"model": job.model.to_dict()}).tensorboard is True  # runs recorded before the switch
    with pytest.raises(ValueError, match="'tensorboard' must be true or false"):
        TrainJob.from_dict({**job.to_dict(), "tensorboard": "yes"})
