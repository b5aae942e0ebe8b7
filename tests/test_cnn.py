"""The CNN family: config validation, image views of data, training on images, the Train page, export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from agent.data import DataSource, load_csv, parse_image_shape, with_image_shape
from agent.model import ModelConfig, build_model, image_shape_for
from agent.training import TrainJob, build_parser, job_from_args, main, train
from dashboard import forms
from runs.jobs import stop_job, wait_job
from runs.registry import Registry

TRAIN_PAGE = Path(__file__).resolve().parent.parent / "dashboard" / "pages" / "train.py"
# The CNN the Train page test trains: two conv blocks (16, 32), one Dense layer of 64, 20 epochs.
PAGE_CNN = {"layers": 1, "units": 64, "batch_size": 32, "epochs": 20}


# -- config and data ----------------------------------------------------------------------------


def test_cnn_config_validates_and_round_trips() -> None:
    cfg = ModelConfig(family="cnn", filters=(8, 16, 32), kernel_size=5, pooling="avg", hidden=(32,))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.summary == "cnn 8,16,32 k5 avg + 32"
    # Configs stored before the family existed load as MLPs.
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("family", "filters", "kernel_size",
                                                                          "pooling")}
    assert ModelConfig.from_dict(old).family == "mlp"
    for kwargs, message in (({"family": "gan"}, "family must be one of mlp, cnn, rnn"),
                            ({"family": "cnn", "filters": ()}, "at least one conv block"),
                            ({"filters": (0,)}, "1..1024 filters"),
                            ({"filters": (8,) * 7}, "at most 6 conv blocks"),
                            ({"kernel_size": 0}, "kernel_size must be an integer in [1, 11]"),
                            ({"pooling": "min"}, "pooling must be one of max, avg, none")):
        with pytest.raises(ValueError, match=re.escape(message)):
            ModelConfig(**kwargs)


def test_image_views_of_builtin_and_csv_data() -> None:
    assert parse_image_shape("8x8x1") == (8, 8, 1) and parse_image_shape("28,28") == (28, 28, 1)
    assert parse_image_shape(" ") == ()
    with pytest.raises(ValueError, match="H,W,C"):
        parse_image_shape("8,eight")
    digits = DataSource("digits", image_shape=(8, 8, 1)).load()
    spec = digits.spec()
    assert spec.model_input_shape == (8, 8, 1) and spec.shape_rows(digits.x[:3]).shape == (3, 8, 8, 1)
    assert np.array_equal(spec.shape_rows(digits.x[:1])[0, 1, :, 0], digits.x[0, 8:16])  # row-major pixels
    with pytest.raises(ValueError, match="holds 128 values but the data has 64 features"):
        with_image_shape(digits, (8, 8, 2))
    assert image_shape_for(ModelConfig(family="cnn"), "digits") == (8, 8, 1)
    assert image_shape_for(ModelConfig(), "digits") == ()  # the MLP keeps flat rows

    rows = "\n".join(",".join(str((i + j) % 5) for j in range(12)) + f",{i % 2}" for i in range(40))
    header = ",".join(f"p{j}" for j in range(12)) + ",label"
    csv = f"{header}\n{rows}\n".encode()
    images = with_image_shape(load_csv(csv, "label"), (2, 2, 3))
    assert images.spec().model_input_shape == (2, 2, 3)


def test_a_cnn_refuses_flat_data_and_an_mlp_flattens_images() -> None:
    from agent.data import DataSpec

    flat = DataSpec("iris", "classification", ("a", "b", "c", "d"), ("x", "y"))
    with pytest.raises(ValueError, match=r"a cnn needs image-shaped data .*input shape \(4,\)"):
        build_model(ModelConfig(family="cnn"), flat)
    images = DataSpec("px", "classification", tuple(f"p{i}" for i in range(12)), ("x", "y"), (2, 2, 3))
    mlp = build_model(ModelConfig(hidden=(4,)), images)
    assert tuple(mlp.input_shape) == (None, 2, 2, 3) and tuple(mlp.output_shape) == (None, 2)
    assert mlp.count_params() == 2 * 3 + 1 + 12 * 4 + 4 + 4 * 2 + 2  # normalization per channel, then Dense


@pytest.mark.parametrize(("argv", "message"), [
    (["--family", "cnn", "--dataset", "iris"], "needs image-shaped data: give --image-shape"),
    (["--family", "cnn", "--image-shape", "8,8,2"], "H*W*C must equal the feature count"),
    (["--filters", "16,a"], "filters must be comma-separated integers"),
])
def test_training_cli_refuses_bad_cnn_usage(argv: list[str], message: str, registry: Registry,
                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)  # the registry fixture's home is $TUNESWARM_HOME
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not registry.list_runs()  # nothing recorded for bad usage


def test_train_form_and_cli_record_the_same_cnn_job(tmp_path: Path) -> None:
    form = forms.TrainForm(family="cnn", filters="8,16", kernel_size=5, pooling="avg", layers=1)
    config, source = forms.model_config(form), forms.data_source(form)
    assert (config.family, config.filters, config.kernel_size, config.pooling) == ("cnn", (8, 16), 5, "avg")
    assert source.image_shape == (8, 8, 1)
    job = TrainJob(config, source)
    assert TrainJob.from_dict(job.to_dict()) == job  # the frozen config survives the registry's JSON
    args = build_parser().parse_args(["--family", "cnn", "--filters", "8,16", "--kernel-size", "5",
                                      "--pooling", "avg", "--hidden", str(config.hidden[0])])
    cli = job_from_args(args)
    assert (cli.model.family, cli.model.filters, cli.model.kernel_size, cli.model.pooling) == (
        "cnn", (8, 16), 5, "avg")
    assert cli.data.image_shape == (8, 8, 1)
    assert forms.model_config(forms.TrainForm(filters="junk")).filters == ModelConfig().filters  # mlp ignores
    assert "filters must be comma-separated" in forms.train_check(
        forms.TrainForm(family="cnn", filters="junk")).errors[0]
    assert "a CNN needs image-shaped data" in forms.train_check(
        forms.TrainForm(family="cnn", dataset="wine")).errors[0]
    csv = forms.TrainForm(dataset="csv", csv_target="y", family="cnn", image_shape="4,4")
    assert forms.data_source(csv, tmp_path / "d.csv").image_shape == (4, 4, 1)
    assert "image shape must be" in forms.train_check(
        forms.TrainForm(dataset="csv", csv_target="y", family="cnn", image_shape="4,4,0"), has_csv=True).errors[0]


# -- real training -------------------------------------------------------------------------------


def test_cnn_trains_on_an_image_csv_and_exports_for_tf_serving(registry: Registry, tmp_path: Path) -> None:
    """A 4x4x1 'bright half' CSV: the CNN's input is the image, samples are images, the SavedModel agrees."""
    import tensorflow as tf

    from agent import tfserving
    from agent.export import load_model, load_samples

    rng = np.random.default_rng(0)
    x = rng.random((160, 16)).astype(np.float32)
    y = (x.reshape(-1, 4, 4)[:, :2].sum(axis=(1, 2)) > x.reshape(-1, 4, 4)[:, 2:].sum(axis=(1, 2))).astype(int)
    path = tmp_path / "img.csv"
    path.write_text(",".join(f"p{i}" for i in range(16)) + ",label\n"
                    + "\n".join(",".join(f"{v:.4f}" for v in row) + f",{t}" for row, t in zip(x, y, strict=True)))
    cfg = ModelConfig(family="cnn", filters=(4,), hidden=(), epochs=2, batch_size=32)
    result = train(cfg, DataSource("csv", csv_path=str(path), target="label", image_shape=(4, 4, 1)), registry)
    assert result.status == "completed"
    model = load_model(result.model_path)
    assert tuple(model.input_shape) == (None, 4, 4, 1)
    samples = np.asarray(load_samples(result.model_path), np.float32)
    assert samples.shape[1:] == (4, 4, 1)  # TF Serving row format for a (4, 4, 1) input
    assert registry.get_run(result.run_id).summary["data"]["input_shape"] == [4, 4, 1]

    bundle = tfserving.write_bundle(tmp_path / "ship", result.model_path)
    sig = tf.saved_model.load(str(bundle.saved_model)).signatures["serving_default"]
    assert sig.structured_input_signature[1]["features"].shape.as_list() == [None, 4, 4, 1]
    (out,) = sig(features=tf.constant(samples)).values()
    np.testing.assert_allclose(out.numpy(), model.predict(samples, verbose=0), atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_train_page_trains_a_digits_cnn_to_097(home: Path, registry: Registry) -> None:
    """From the Train page's widgets to a finished job: a CNN on 8x8x1 digits reaches >= 0.97 test accuracy."""
    at = AppTest.from_file(str(TRAIN_PAGE), default_timeout=60).run()
    at.radio(key="train.family").set_value("cnn").run()
    assert at.text_input(key="train.filters").value == "16,32"
    at.slider(key="train.layers").set_value(PAGE_CNN["layers"])
    at.select_slider(key="train.units").set_value(PAGE_CNN["units"])
    at.select_slider(key="train.batch_size").set_value(PAGE_CNN["batch_size"])
    at.number_input(key="train.epochs").set_value(PAGE_CNN["epochs"])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.button(key="train.start").click().run()
    run = registry.list_runs(kind="train")[0]
    try:
        assert run.config["model"]["family"] == "cnn" and run.config["model"]["filters"] == [16, 32]
        assert run.config["data"]["image_shape"] == [8, 8, 1]
        done = wait_job(registry, run.id, timeout_s=180)
        assert done.status == "completed", done.error
        assert done.summary["data"]["input_shape"] == [8, 8, 1]
        assert done.summary["test_metrics"]["accuracy"] >= 0.97, done.summary["test_metrics"]["accuracy"]
        assert len(registry.metric_rows(run.id)) == PAGE_CNN["epochs"]  # live curves: one row per epoch
    finally:
        stop_job(registry, run.id, grace_s=5)
    at.run()
    assert not at.exception
    assert any("accuracy" in m.label for m in at.metric)
    assert any("CNN · served input shape 8 × 8 × 1" in c.value for c in at.caption)
