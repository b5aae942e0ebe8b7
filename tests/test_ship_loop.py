"""The loop closed: what is shipped to TF Serving is what the embedded endpoint serves and swarms.

A TF Serving bundle is written for the suite's trained MLP and for a CNN on (8, 8, 1)
images; the endpoint serves ``bundle/<name>/<version>/`` (the exported SavedModel)
with the tflite and tf-function runtimes and answers what the ``.keras`` model
answers, and ``python -m loadtest --serve`` swarms it. An imported SavedModel is
shipped as a copy of itself, not re-exported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_zoo import cnn_model
from serving_helpers import request, running_server

from agent import tfserving
from agent.serving.app import create_app
from agent.serving.config import ServingConfig
from runs.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ROWS = 12


@pytest.fixture(scope="module")
def bundles(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (the .keras model, its exported SavedModel version folder)."""
    folder = tmp_path_factory.mktemp("ship-loop")
    cnn_path = folder / "cnn" / "cnn.keras"
    cnn_path.parent.mkdir()
    cnn_model().save(cnn_path)
    out = {}
    for name, path in (("mlp", trained_model), ("cnn", cnn_path)):
        bundle = tfserving.write_bundle(folder / "bundle", path, ServingConfig(max_batch_size=8), name=name)
        assert bundle.saved_model == folder.resolve() / "bundle" / name / "1"
        out[name] = (path, bundle.saved_model)
    return out


def _inputs(keras_path: Path, n: int) -> np.ndarray:
    from agent.export import load_model

    shape = tuple(load_model(keras_path).inputs[0].shape[1:])
    return np.random.default_rng(7).uniform(0, 1, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("runtime", ["tflite", "tf-function"])
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_endpoint_serves_the_exported_saved_model_as_the_keras_model_answers(
        bundles: dict[str, tuple[Path, Path]], which: str, runtime: str) -> None:
    from agent.export import load_model

    keras_path, saved = bundles[which]
    x = _inputs(keras_path, ROWS)
    expected = load_model(keras_path).predict(x, verbose=0)
    config = ServingConfig(runtime=runtime, max_batch_size=8, batch_timeout_ms=1)
    with running_server(create_app(saved, "m", config)) as port:
        meta = request(port, "GET", "/v1/models/m/metadata")
        assert meta.status == 200
        sig = meta.json["metadata"]["signature_def"]["signature_def"]["serving_default"]
        (spec,) = sig["inputs"].values()
        assert [int(d["size"]) for d in spec["tensor_shape"]["dim"]] == [-1, *x.shape[1:]]
        for body, key in (({"instances": x.tolist()}, "predictions"), ({"inputs": x.tolist()}, "outputs")):
            r = request(port, "POST", "/v1/models/m:predict", body)
            assert r.status == 200, r.body
            np.testing.assert_allclose(np.asarray(r.json[key], np.float32), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_loadtest_swarms_the_shipped_saved_model(home: Path, bundles: dict[str, tuple[Path, Path]],
                                                 which: str) -> None:
    _, saved = bundles[which]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "--serve", str(saved), "--model-name", which, "-u", "4", "-r", "4",
         "--run-time", "5s", "--slo", "fail_ratio<=0.01", "--slo", "rps>=20"],  # rps: requests did flow
        cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  fail_ratio<=0.01" in done.stdout


def test_an_imported_saved_model_ships_as_a_copy_of_itself(bundles: dict[str, tuple[Path, Path]],
                                                          tmp_path: Path) -> None:
    import tensorflow as tf

    from agent.export import load_model

    keras_path, saved = bundles["cnn"]
    bundle = tfserving.write_bundle(tmp_path / "again", saved, ServingConfig(max_batch_size=4), name="cnn")
    copied = bundle.saved_model
    assert copied == (tmp_path / "again" / "cnn" / "1").resolve()
    source_files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file()) == source_files
    assert (copied / "saved_model.pb").read_bytes() == (saved / "saved_model.pb").read_bytes()
    fn = tf.saved_model.load(str(copied)).signatures["serving_default"]
    x = _inputs(keras_path, 4)
    (name,) = fn.structured_input_signature[1]
    (out,) = fn(**{name: tf.constant(x)}).values()
    np.testing.assert_allclose(out.numpy(), load_model(keras_path).predict(x, verbose=0), atol=1e-5)
    md = bundle.serve_md.read_text()
    assert "a copy of the imported SavedModel" in md and f"`{name}` float32 [None, 8, 8, 1]" in md
    assert "max_batch_size { value: 4 }" in bundle.batching.read_text()
    # shipping into the folder that holds the source would copy it into itself: refused, nothing written
    with pytest.raises(ValueError, match="must not contain the SavedModel"):
        tfserving.write_bundle(saved.parent, saved, name="cnn")


def test_a_sweep_of_a_saved_model_and_the_cli_ship_the_copy(bundles: dict[str, tuple[Path, Path]],
                                                            registry: Registry, tmp_path: Path) -> None:
    from tuning.ship import ship_sweep
    from tuning.sweep import SweepSpec, create_sweep

    _, saved = bundles["mlp"]
    spec = SweepSpec(model_path=str(saved), space={"max_batch_size": [1, 8]}, users=(2,), slos=("p95<=50ms",),
                     verify_top=0)
    run_id = create_sweep(registry, spec)
    registry.update_summary(run_id, {"recommended_config": ServingConfig(max_batch_size=8).to_dict(),
                                     "recommendation": {"best": {"label": "b8"}, "constraints": ["p95<=50ms"]}})
    registry.set_status(run_id, "completed")
    bundle = ship_sweep(registry, run_id, tmp_path / "from-sweep")
    assert (bundle.saved_model / "saved_model.pb").read_bytes() == (saved / "saved_model.pb").read_bytes()
    assert "a copy of the imported SavedModel" in bundle.serve_md.read_text()

    out = tmp_path / "from-cli"
    assert tfserving.main(["--model", str(saved), "--out", str(out), "--name", "digits"]) == 0
    assert (out / "digits" / "1" / "saved_model.pb").read_bytes() == (saved / "saved_model.pb").read_bytes()
