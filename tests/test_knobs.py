"""Issue 16's knobs: initialisers, the target stop, the recurrent family, and the hand-written GradientTape loop."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import export
from agent.data import DataSource, make_sequences, split
from agent.model import BIAS_INITS, WEIGHT_INITS, ModelConfig, build_model
from agent.training import main, train
from dashboard import forms
from runs.jobs import reap, stop_job
from runs.registry import Registry

# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weight_init": "orthogonal"}, "weight_init must be one of glorot_uniform, glorot_normal, he_uniform"),
    ({"bias_init": "ones"}, "bias_init must be one of zeros, constant, random_normal"),
    ({"init_stddev": 0.0}, "init_stddev must be a number in [1e-06, 10]"),
    ({"bias_value": float("inf")}, "bias_value must be a number"),
    ({"target": -1.0}, "target must be a number in [0, 1e+12]"),
    ({"target": 1.5, "target_metric": "val_accuracy"}, "target must be a number in [0, 1]"),
    ({"target_metric": "f1"}, "target_metric must be one of loss, val_loss"),
    ({"family": "transformer"}, "family must be one of mlp, cnn, rnn"),
    ({"rnn_cell": "qrnn"}, "rnn_cell must be one of gru, lstm, simple_rnn"),
    ({"rnn_units": (8, 8, 8)}, "rnn_units: 1 or 2 recurrent layers; got 3"),
    ({"rnn_units": (0,)}, "rnn_units: each recurrent layer needs 1..4096 units"),
    ({"rnn_input": "onehot"}, "rnn_input must be one of embedding, dense"),
    ({"embed_dim": 0}, "embed_dim must be an integer in [1, 512]"),
    ({"mode": "jax"}, "mode must be one of fit, tape"),
    ({"mode": "tape"}, "mode tape trains one Dense layer f(Wx + b): it needs family mlp and no hidden layers"),
])
def test_new_fields_validate_with_a_message_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**kwargs)


def test_new_fields_round_trip_and_old_configs_still_load() -> None:
    cfg = ModelConfig(family="rnn", rnn_cell="lstm", rnn_units=(16, 8), weight_init="he_normal",
                      bias_init="constant", bias_value=0.1, target=0.2, target_metric="val_loss", hidden=(8,))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.summary == "lstm 16,8 emb16 + 8"
    old = {k: v for k, v in ModelConfig().to_dict().items() if k in ("hidden", "activation", "epochs")}
    assert ModelConfig.from_dict(old).weight_init == "glorot_uniform"


# -- initialisers -------------------------------------------------------------------------------


def test_each_initialiser_reaches_every_layer_and_trains() -> None:
    ds = DataSource("iris").load()
    s = split(ds)
    # Every weight initialiser once, every bias initialiser once (not the product: each build costs a trace).
    pairs = [(w, "zeros") for w in WEIGHT_INITS] + [("glorot_uniform", b) for b in BIAS_INITS if b != "zeros"]
    for weight_init, bias_init in pairs:
        cfg = ModelConfig(hidden=(16,), weight_init=weight_init, bias_init=bias_init, init_stddev=0.5,
                          bias_value=0.25, epochs=1, batch_size=32)
        model = build_model(cfg, ds.spec(), s.train.x)
        for name in ("dense_0", "probabilities"):
            kernel, bias = (np.asarray(v) for v in model.get_layer(name).get_weights())
            if weight_init == "zeros":
                assert not kernel.any(), name
            elif weight_init == "random_normal":
                assert kernel.std() == pytest.approx(0.5, rel=0.35), name
            else:
                assert kernel.std() > 0, name
            expected_bias = {"zeros": 0.0, "constant": 0.25}.get(bias_init)
            if expected_bias is None:
                assert bias.std() > 0.05, name
            else:
                assert np.all(bias == expected_bias), name
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)  # no tracing
        loss = model.train_on_batch(s.train.x, s.train.y, return_dict=True)["loss"]
        assert math.isfinite(float(loss)), (weight_init, bias_init)
    rnn = build_model(ModelConfig(family="rnn", weight_init="zeros"), make_sequences(n_samples=20).spec())
    assert not np.asarray(rnn.get_layer("gru_0").get_weights()[0]).any()  # the recurrent input kernel too


def test_zero_weights_with_relu_stay_at_the_initial_loss(registry: Registry) -> None:
    # relu'(0) = 0 and every kernel is 0, so no kernel ever gets a gradient; only the head's biases move, and
    # on digits' near-uniform classes they can lower the loss from ln(10) by less than 1e-3.
    common = {"hidden": (32,), "activation": "relu", "epochs": 3, "batch_size": 64}
    zeros = train(ModelConfig(weight_init="zeros", **common), DataSource("digits"), registry)
    losses = [row["loss"] for row in registry.metric_rows(zeros.run_id)]
    assert losses[-1] == pytest.approx(math.log(10), abs=2e-3) and max(losses) - min(losses) < 2e-3
    assert registry.get_run(zeros.run_id).config["model"]["weight_init"] == "zeros"
    he = train(ModelConfig(weight_init="he_normal", **common), DataSource("digits"), registry)
    assert registry.metric_rows(he.run_id)[-1]["loss"] < 0.7 * math.log(10)  # the same model, learning


def test_the_runs_config_diff_shows_the_initialisers(registry: Registry) -> None:
    from dashboard.charts import config_diff

    configs = {name: {"model": ModelConfig(weight_init=w, bias_init=b).to_dict()}
               for name, w, b in (("a", "he_normal", "zeros"), ("b", "zeros", "constant"))}
    text = str(config_diff(configs, only_different=True))
    assert "weight_init" in text and "he_normal" in text and "bias_init" in text and "constant" in text


# -- the target stop ----------------------------------------------------------------------------


def test_target_loss_ends_the_run_early_and_records_why(registry: Registry) -> None:
    config = ModelConfig(hidden=(32,), epochs=50, target=0.3, target_metric="val_loss", patience=20)
    result = train(config, DataSource("digits"), registry)
    rows = registry.metric_rows(result.run_id)
    stop = registry.get_run(result.run_id).summary["stop"]
    assert result.status == "completed" and result.epochs_run < 50
    assert stop["rule"] == "target" and stop["epoch"] == result.epochs_run == len(rows)
    assert rows[-1]["val_loss"] <= 0.3 < min(r["val_loss"] for r in rows[:-1])
    assert "val_loss" in stop["detail"] and "<= target 0.3" in stop["detail"]


def test_other_stop_rules_are_recorded_too(registry: Registry) -> None:
    plain = train(ModelConfig(hidden=(8,), epochs=2), DataSource("iris"), registry)
    assert plain.stop == {"rule": "epochs", "epoch": 2, "detail": "ran all 2 epochs"}
    # An unreachable target leaves patience to stop it: SGD at lr 10 diverges, so val_loss never improves.
    patient = train(ModelConfig(hidden=(8,), epochs=40, patience=1, learning_rate=10.0, optimizer="sgd",
                                target=0.0), DataSource("iris"), registry)
    assert patient.stop["rule"] == "patience" and patient.stop["epoch"] == patient.epochs_run < 40


def test_a_target_metric_the_task_never_logs_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="target metric val_accuracy is logged for classification only"):
        train(ModelConfig(epochs=1, target=0.9, target_metric="val_accuracy"), DataSource("diabetes"), registry)
    assert registry.list_runs()[0].status == "failed"


# -- the recurrent family -----------------------------------------------------------------------


def test_sequences_follow_their_rule_and_are_balanced() -> None:
    ds = make_sequences(n_samples=400, length=9, seed=3)
    assert ds.x.shape == (400, 9) and ds.y.mean() == 0.5
    first_a = np.argmax(ds.x == 1, axis=1)
    first_b = np.argmax(ds.x == 2, axis=1)
    assert np.array_equal(ds.y, (first_a < first_b).astype(int))
    with pytest.raises(ValueError, match=r"seq_length must be an integer in \[3, 200\]"):
        DataSource("sequences", seq_length=2)


@pytest.mark.slow
def test_an_rnn_learns_the_sequence_rule_and_serves_float_rows(registry: Registry) -> None:
    config = ModelConfig(family="rnn", rnn_cell="gru", rnn_units=(32,), hidden=(), epochs=4, batch_size=32,
                         learning_rate=0.01)
    result = train(config, DataSource("sequences", seq_length=12), registry)
    assert result.metrics["accuracy"] >= 0.9
    assert [r["step"] for r in registry.metric_rows(result.run_id)] == [1, 2, 3, 4]
    model = export.load_model(result.model_path)  # safe mode: only built-in layers
    samples = np.asarray(export.load_samples(result.model_path)[:4], np.float32)
    assert samples.shape == (4, 12)
    # Served rows are floats: 2.9 and -3 round/clip to token ids inside the model instead of failing.
    noisy = samples.copy()
    noisy[:, 0] = [2.9, -3.0, 1e6, 0.4]
    assert model.predict(noisy, verbose=0).shape == (4, 2)
    # Shipped to TF Serving like the MLP: the SavedModel takes the same float rows and agrees with Keras.
    import tensorflow as tf

    from agent import tfserving

    bundle = tfserving.write_bundle(result.model_path.parent / "ship", result.model_path)
    (out,) = tf.saved_model.load(str(bundle.saved_model)).signatures["serving_default"](
        features=tf.constant(samples)).values()
    np.testing.assert_allclose(out.numpy(), model.predict(samples, verbose=0), atol=1e-5)


def test_an_rnn_reads_a_csv_whose_columns_are_the_time_steps(registry: Registry, tmp_path: Path) -> None:
    # Real-valued steps with a known rule: is the running sum positive at the end?
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 10)).round(3)
    y = (x.sum(axis=1) > 0).astype(int)
    path = tmp_path / "series.csv"
    path.write_text(",".join(f"s{i}" for i in range(10)) + ",label\n"
                    + "\n".join(",".join(map(str, row)) + f",{t}" for row, t in zip(x, y, strict=True)) + "\n")
    config = ModelConfig(family="rnn", rnn_input="dense", rnn_cell="gru", rnn_units=(16,), hidden=(), epochs=6,
                         batch_size=32, learning_rate=0.01)
    result = train(config, DataSource("csv", csv_path=str(path), target="label"), registry)
    assert result.metrics["accuracy"] >= 0.85, result.metrics["accuracy"]
    assert registry.get_run(result.run_id).summary["data"]["input_shape"] == [10]


def test_a_dense_input_rnn_and_two_layers_build() -> None:
    spec = make_sequences(n_samples=20, length=6).spec()
    model = build_model(ModelConfig(family="rnn", rnn_input="dense", rnn_cell="simple_rnn", rnn_units=(8, 4),
                                    hidden=(4,)), spec)
    assert [layer.name for layer in model.layers][:4] == ["features", "normalize", "steps", "simple_rnn_0"]
    assert tuple(model.input_shape) == (None, 6) and tuple(model.output_shape) == (None, 2)


@pytest.mark.integration
@pytest.mark.slow
def test_an_rnn_is_swept_served_and_swarmed_like_the_mlp(registry: Registry) -> None:
    from tuning.model_sweep import ModelSweepSpec, create_model_sweep, run_model_sweep

    # One grid point (each costs a training, an endpoint start and a swarm); the default runtime is tflite.
    spec = ModelSweepSpec(dataset="sequences", grid={"family": ["rnn"], "rnn_cell": ["lstm"], "hidden": [[]]},
                          epochs=2, users=2, step_s=2.0, slos=("p99<=5000ms",))
    run_id = create_model_sweep(registry, spec)
    try:
        assert run_model_sweep(registry, run_id) == "completed"
        rows = registry.get_run(run_id).summary["models"]
        assert [(r["family"], r["rnn_cell"], r["label"]) for r in rows] == [("rnn", "lstm", "no dense rnn lstm")]
        for r in rows:
            assert r["test_accuracy"] > 0.5 and r["rps"] > 0 and r["p99_ms"] > 0 and r["fail_ratio"] == 0
            assert registry.get_run(r["train_run_id"]).config["model"]["family"] == "rnn"
        children = [r for r in registry.list_runs() if r.parent_id == run_id]
        assert {r.kind for r in children} == {"train", "serve", "loadtest"}
    finally:
        reap(registry)
        for run in registry.list_runs(status=("pending", "running")):
            stop_job(registry, run.id, grace_s=5.0)


# -- the hand-written GradientTape loop ---------------------------------------------------------


def _linear_data(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.array([[0.8, -1.5], [1.2, 0.4]], np.float32)
    b = np.array([0.5, -0.3], np.float32)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    return x, x @ w + b, w, b


def test_the_tape_loop_recovers_w_and_b_of_y_equals_wx_plus_b() -> None:
    import tensorflow as tf

    from agent.tape import tape_fit

    x, y, w_true, b_true = _linear_data()
    w, b = tf.Variable(tf.random.normal((2, 2), seed=1)), tf.Variable(tf.zeros(2))  # the seed's initialisation
    history = tape_fit(x, y, w, b, activation="linear", learning_rate=0.05, epochs=10, batch_size=32)
    assert np.abs(w.numpy() - w_true).max() < 0.05 and np.abs(b.numpy() - b_true).max() < 0.05
    assert history[-1].loss < 1e-3 < history[0].loss


def test_the_tape_loop_with_relu_ends_within_10_percent_of_fit() -> None:
    import keras
    import tensorflow as tf

    from agent.tape import make_forward, mse, tape_fit

    ds = DataSource("synthetic", synthetic_activation="relu", n_features=4, n_samples=1500, seed=4).load()
    x, y = ds.x, ds.y.reshape(-1, 1)
    keras.utils.set_random_seed(4)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(1, activation="relu")
    model = keras.Model(inputs, dense(inputs))
    start = [np.asarray(v) for v in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    fit_loss = float(model.evaluate(x, y, verbose=0))
    w, b = tf.Variable(start[0]), tf.Variable(start[1])
    tape_fit(x, y, w, b, activation="relu", learning_rate=0.05, epochs=15, batch_size=32)
    tape_loss, _ = mse(make_forward(w, b, activation="relu"), x, y)
    assert fit_loss < 0.01  # both actually learned (the initial loss is ~0.3)
    assert abs(tape_loss - fit_loss) <= 0.1 * fit_loss, (tape_loss, fit_loss)


def test_a_tape_run_is_recorded_like_any_run_and_honours_the_stop_flag(registry: Registry) -> None:
    config = ModelConfig(hidden=(), mode="tape", output_activation="tanh", learning_rate=0.3, epochs=8,
                         batch_size=32)
    result = train(config, DataSource("synthetic", synthetic_activation="tanh"), registry)
    rows = registry.metric_rows(result.run_id)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss", "val_loss", "mae", "val_mae", "lr", "samples_per_s"} <= set(rows[0])
    assert rows[-1]["val_loss"] < 0.01 * rows[0]["loss"] and result.metrics["r2"] > 0.99
    # The saved model is what the loop trained.
    model = export.load_model(result.model_path)
    assert [layer.name for layer in model.layers] == ["features", "normalize", "prediction"]

    run_id = registry.create_run("train", {"model": config.to_dict()})
    registry.request_stop(run_id)
    stopped = train(ModelConfig(**{**config.to_dict(), "epochs": 200}), DataSource("synthetic"), registry, run_id)
    assert stopped.status == "stopped" and stopped.epochs_run == 1 and stopped.stop["rule"] == "request"


def test_a_tape_run_with_a_target_loss_stops_there(registry: Registry) -> None:
    config = ModelConfig(hidden=(), mode="tape", output_activation="linear", learning_rate=0.1, epochs=100,
                         target=1e-4, batch_size=32)
    result = train(config, DataSource("synthetic", synthetic_activation="linear"), registry)
    assert result.stop["rule"] == "target" and result.epochs_run < 100


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "tape", "--hidden", "8"], "mode tape trains one Dense layer"),
    (["--weight-init", "ones"], "invalid choice"),
    (["--family", "rnn", "--rnn-units", "8,8,8"], "rnn_units: 1 or 2 recurrent layers"),
    (["--stop-at", "2", "--stop-metric", "accuracy"], "target must be a number in [0, 1]"),
    (["--dataset", "sequences", "--seq-length", "500"], "seq_length must be an integer in [3, 200]"),
])
def test_cli_refuses_bad_new_flags_with_one_line(argv: list[str], message: str, home: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1]


def test_cli_trains_an_rnn_with_every_new_flag(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--dataset", "sequences", "--seq-length", "8", "--family", "rnn", "--rnn-cell", "simple_rnn",
                 "--rnn-units", "8", "--rnn-input", "embedding", "--embed-dim", "4", "--hidden", "none",
                 "--weight-init", "lecun_normal", "--bias-init", "random_normal", "--init-stddev", "0.1",
                 "--stop-at", "0.99", "--stop-metric", "val_accuracy", "--epochs", "1", "--mode", "fit"])
    assert code == 0, capsys.readouterr().err
    run = Registry(home).list_runs()[0]
    model = run.config["model"]
    assert (model["family"], model["rnn_cell"], model["rnn_units"], model["embed_dim"]) == ("rnn", "simple_rnn",
                                                                                            [8], 4)
    assert (model["weight_init"], model["bias_init"], model["target_metric"]) == ("lecun_normal", "random_normal",
                                                                                  "val_accuracy")
    assert run.config["data"]["seq_length"] == 8 and run.summary["stop"]["epoch"] == 1


# -- the Train page -----------------------------------------------------------------------------

TRAIN_PAGE = Path(__file__).resolve().parent.parent / "dashboard" / "pages" / "train.py"
NEW_KEYS = ("mode", "rnn_cell", "rnn_layers", "rnn_units", "rnn_input", "embed_dim", "weight_init", "bias_init",
            "init_stddev", "bias_value", "use_target", "target_metric", "target_value", "seq_length")


def _train_page() -> Any:
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(TRAIN_PAGE), default_timeout=60).run()


def _config(at: Any) -> dict:
    return json.loads(at.json[0].value)


def test_train_page_exposes_every_new_knob_with_help(home: Path) -> None:
    at = _train_page()
    at.selectbox(key="train.dataset").set_value("sequences").run()
    at.radio(key="train.family").set_value("rnn").run()
    at.selectbox(key="train.weight_init").set_value("random_normal")
    at.selectbox(key="train.bias_init").set_value("constant").run()
    at.checkbox(key="train.use_target").check().run()
    at.slider(key="train.seq_length").set_value(20)
    at.selectbox(key="train.rnn_cell").set_value("lstm")
    at.slider(key="train.rnn_layers").set_value(2)
    at.select_slider(key="train.rnn_units").set_value(16)
    at.select_slider(key="train.embed_dim").set_value(8)
    at.number_input(key="train.init_stddev").set_value(0.2)
    at.number_input(key="train.bias_value").set_value(0.1)
    at.selectbox(key="train.target_metric").set_value("val_accuracy")
    at.number_input(key="train.target_value").set_value(0.95)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = {w.key for kind in ("slider", "select_slider", "selectbox", "number_input", "radio", "checkbox")
             for w in at.get(kind)}
    assert {f"train.{k}" for k in NEW_KEYS} <= shown, {f"train.{k}" for k in NEW_KEYS} - shown
    for kind in ("slider", "select_slider", "selectbox", "number_input", "radio", "checkbox"):
        for widget in at.get(kind):
            assert widget.proto.help, f"{widget.key} has no help"
    assert "relu-family" in at.selectbox(key="train.weight_init").proto.help
    model = _config(at)["model"]
    assert (model["family"], model["rnn_cell"], model["rnn_units"], model["embed_dim"]) == ("rnn", "lstm",
                                                                                            [16, 16], 8)
    assert (model["weight_init"], model["init_stddev"], model["bias_init"], model["bias_value"]) == (
        "random_normal", 0.2, "constant", 0.1)
    assert (model["target_metric"], model["target"], model["mode"]) == ("val_accuracy", 0.95, "fit")
    form_source = forms.data_source(forms.TrainForm(dataset="sequences", seq_length=20))
    assert form_source.seq_length == 20


def test_train_page_tape_mode_and_its_checks(home: Path) -> None:
    at = _train_page()
    at.radio(key="train.mode").set_value("tape").run()
    assert any("pick a regression set" in e.value for e in at.error)
    assert at.button(key="train.start").disabled
    at.selectbox(key="train.dataset").set_value("synthetic").run()
    at.selectbox(key="train.activation").set_value("relu").run()
    assert not at.exception and not at.error
    model = _config(at)["model"]
    assert (model["mode"], model["hidden"], model["family"], model["output_activation"]) == ("tape", [], "mlp",
                                                                                             "relu")
    at.checkbox(key="train.use_target").check().run()
    at.selectbox(key="train.target_metric").set_value("accuracy").run()
    assert any("target metric accuracy is logged for classification only" in e.value for e in at.error)


def test_train_form_and_cli_record_every_new_knob_alike() -> None:
    from agent.training import TrainJob, build_parser, job_from_args

    form = forms.TrainForm(dataset="sequences", seq_length=9, family="rnn", rnn_cell="simple_rnn", rnn_layers=2,
                             rnn_units=8, rnn_input="dense", weight_init="he_uniform", bias_init="random_normal",
                             init_stddev=0.3, use_target=True, target=0.25, target_metric="loss")
    config, source = forms.model_config(form), forms.data_source(form)
    job = TrainJob(config, source)
    assert TrainJob.from_dict(job.to_dict()) == job  # the frozen config survives the registry's JSON
    args = build_parser().parse_args([
        "--dataset", "sequences", "--seq-length", "9", "--family", "rnn", "--rnn-cell", "simple_rnn",
        "--rnn-units", "8,8", "--rnn-input", "dense", "--weight-init", "he_uniform", "--bias-init", "random_normal",
        "--init-stddev", "0.3", "--stop-at", "0.25", "--stop-metric", "loss",
        "--hidden", ",".join(str(u) for u in config.hidden) or "none",
    ])
    cli = job_from_args(args)
    assert (cli.model.family, cli.model.rnn_cell, cli.model.rnn_units, cli.model.rnn_input, cli.data.seq_length) == (
        "rnn", "simple_rnn", (8, 8), "dense", 9)
    assert (cli.model.weight_init, cli.model.bias_init, cli.model.init_stddev, cli.model.target,
            cli.model.target_metric) == ("he_uniform", "random_normal", 0.3, 0.25, "loss")
    assert cli.model == config  # the page and the CLI describe the same model
    assert forms.model_config(forms.TrainForm(rnn_cell="lstm")).rnn_cell == "gru"  # an mlp keeps defaults
    assert forms.model_config(forms.TrainForm()).target is None


def test_train_page_says_which_rule_stopped_a_finished_run(home: Path, registry: Registry) -> None:
    run_id = registry.create_run("train", {"model": {"hidden": [8], "family": "rnn"},
                                           "data": {"dataset": "sequences"}}, name="train sequences")
    registry.log_metric_rows(run_id, [(e, {"loss": 1.0 / e, "val_loss": 1.1 / e, "accuracy": 0.9,
                                           "val_accuracy": 0.9}) for e in (1, 2, 3)])
    registry.update_summary(run_id, {"test_metrics": {"accuracy": 0.97}, "epochs_run": 3, "param_count": 10,
                                     "data": {"input_shape": [12], "classes": ["B first", "A first"]},
                                     "stop": {"rule": "target", "epoch": 3,
                                              "detail": "val_loss 0.29 <= target 0.3"}})
    registry.set_status(run_id, "completed")
    at = _train_page()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Stopped by: **target reached** at epoch 3 — val_loss 0.29 <= target 0.3" in captions
    assert "RNN · served input shape 12" in captions


@pytest.mark.integration
def test_tune_page_sweeps_families_and_initialisers(home: Path, registry: Registry) -> None:
    from streamlit.testing.v1 import AppTest

    page = Path(__file__).resolve().parent.parent / "dashboard" / "pages" / "tune.py"
    at = AppTest.from_file(str(page), default_timeout=60).run()
    at.selectbox(key="tune.m_dataset").set_value("sequences")
    at.multiselect(key="tune.m_family").set_value(["rnn"])
    at.multiselect(key="tune.m_weight_init").set_value(["he_normal", "zeros"])
    at.multiselect(key="tune.m_activation").set_value(["relu"])
    at.text_input(key="tune.m_hidden").set_value("32")
    at.run()
    at.button(key="tune.m_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sweep = next(r for r in registry.list_runs(kind="sweep") if r.config.get("mode") == "models")
    try:
        spec = sweep.config["spec"]
        assert spec["dataset"] == "sequences"
        assert spec["grid"]["family"] == ["rnn"] and spec["grid"]["weight_init"] == ["he_normal", "zeros"]
    finally:
        reap(registry)
        for run in registry.list_runs(status=("pending", "running")):
            stop_job(registry, run.id, grace_s=5.0)
