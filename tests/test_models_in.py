"""Users' own models in: a CNN, two inputs (float + int tokens), a SavedModel, two outputs.

Each is built and saved here (no download), served by the real endpoint, asked in
both TF Serving request formats, compared with the model's own predictions, sent
bad shapes and dtypes, and swarmed by ``python -m loadtest --serve PATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from model_zoo import ZooModel, build_zoo
from serving_helpers import request, running_server

from agent.export import ModelFormatError, check_model_path, load_servable
from agent.serving.app import create_app
from agent.serving.config import ServingConfig
from agent.serving.runtimes import RuntimeRefusedError, make_runtime
from agent.signature import Signature
from loadtest import payload
from runs.registry import Registry
from tuning.imports import ImportRefusedError, import_model, import_upload

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ZOO = ("cnn", "two_input", "saved", "two_output")
N = 6


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module", params=ZOO)
def served(request: pytest.FixtureRequest, zoo: dict[str, ZooModel]) -> Iterator[tuple[ZooModel, int]]:
    model = zoo[request.param]
    # tflite: the conversion path for every format (SavedModel, conv layers, named tensors).
    config = ServingConfig(runtime="tflite", max_batch_size=8, batch_timeout_ms=1, max_instances=64)
    with running_server(create_app(model.path, "m", config)) as port:
        yield model, port


def _rows(model: ZooModel, x: dict[str, np.ndarray]) -> list:
    """Row format: nested arrays for one input, objects keyed by input name for several."""
    if len(x) == 1:
        return next(iter(x.values())).tolist()
    n = len(next(iter(x.values())))
    return [{k: v[i].tolist() for k, v in x.items()} for i in range(n)]


def _as_outputs(model: ZooModel, doc: object, columnar: bool) -> dict[str, np.ndarray]:
    names = list(model.outputs)
    if len(names) == 1:
        return {names[0]: np.asarray(doc, dtype=np.float32)}
    if columnar:
        assert isinstance(doc, dict) and sorted(doc) == sorted(names)
        return {k: np.asarray(v, dtype=np.float32) for k, v in doc.items()}
    assert isinstance(doc, list) and all(isinstance(r, dict) and sorted(r) == sorted(names) for r in doc)
    return {k: np.asarray([r[k] for r in doc], dtype=np.float32) for k in names}


def test_metadata_lists_real_names_shapes_dtypes(served: tuple[ZooModel, int]) -> None:
    model, port = served
    r = request(port, "GET", "/v1/models/m/metadata")
    assert r.status == 200
    sig = r.json["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dtypes = {"float32": "DT_FLOAT", "int32": "DT_INT32"}
    assert sorted(sig["inputs"]) == sorted(model.inputs)
    for name, (shape, dtype) in model.inputs.items():
        t = sig["inputs"][name]
        assert t["dtype"] == dtypes[dtype]
        assert [int(d["size"]) for d in t["tensor_shape"]["dim"]] == [-1, *shape]
    assert sorted(sig["outputs"]) == sorted(model.outputs)
    for name, shape in model.outputs.items():
        assert [int(d["size"]) for d in sig["outputs"][name]["tensor_shape"]["dim"]] == [-1, *shape]
    # What the load tester reads from it, without importing agent:
    specs = payload.signature_from_metadata(r.json)
    assert {s.name: (s.shape, s.dtype) for s in specs} == model.inputs


def test_both_request_formats_match_the_model(served: tuple[ZooModel, int]) -> None:
    model, port = served
    x = model.make_inputs(N, seed=1)
    expected = model.reference(x)
    single = len(x) == 1
    columns = next(iter(x.values())).tolist() if single else {k: v.tolist() for k, v in x.items()}
    forms = [({"instances": _rows(model, x)}, "predictions", False),
             ({"inputs": columns}, "outputs", True),
             ({"signature_name": "serving_default", "inputs": {k: v.tolist() for k, v in x.items()}}, "outputs", True),
             ({"instances": [{k: v[i].tolist() for k, v in x.items()} for i in range(N)]}, "predictions", False)]
    for body, key, columnar in forms:
        r = request(port, "POST", "/v1/models/m:predict", body)
        assert r.status == 200, r.body
        assert list(r.json) == [key]
        got = _as_outputs(model, r.json[key], columnar)
        for name, y in expected.items():
            np.testing.assert_allclose(got[name].reshape(y.shape), y, atol=1e-5, err_msg=f"{model.name} {name}")


def test_bad_shapes_and_dtypes_get_a_400_naming_the_input(served: tuple[ZooModel, int]) -> None:
    model, port = served
    x = model.make_inputs(2)
    name, (shape, dtype) = next(iter(model.inputs.items()))
    wrong_shape = {**x, name: np.zeros((2, shape[0] + 1, *shape[1:]), dtype=dtype)}
    r = request(port, "POST", "/v1/models/m:predict", {"inputs": {k: v.tolist() for k, v in wrong_shape.items()}})
    assert r.status == 400
    msg = r.json["error"]
    assert "wrong shape" in msg and f"'{name}'" in msg and "x".join(map(str, (2, shape[0] + 1, *shape[1:]))) in msg
    assert " x ".join(map(str, shape)) in msg and dtype in msg
    strings = {**x, name: [["a"] * shape[0]] * 2}
    r = request(port, "POST", "/v1/models/m:predict", {"inputs": {k: v if isinstance(v, list) else v.tolist()
                                                                  for k, v in strings.items()}})
    assert r.status == 400 and "strings in" in r.json["error"]
    if len(x) > 1:
        assert f"'{name}'" in r.json["error"]
        r = request(port, "POST", "/v1/models/m:predict", {"instances": [[0.0] * 3]})
        assert r.status == 400 and "object keyed by input name" in r.json["error"]
    ints = [n for n, (_, d) in model.inputs.items() if d.startswith("int")]
    for int_name in ints:
        floats = {**x, int_name: x[int_name].astype(np.float32) + 0.5}
        r = request(port, "POST", "/v1/models/m:predict", {"inputs": {k: v.tolist() for k, v in floats.items()}})
        assert r.status == 400
        assert "non-integer" in r.json["error"] and f"'{int_name}'" in r.json["error"] and "int32" in r.json["error"]
    # and the endpoint goes on serving
    assert request(port, "POST", "/v1/models/m:predict", {"instances": _rows(model, x)}).status == 200


@pytest.mark.parametrize("runtime", ["keras", "tf-function", "xla", "tflite", "tflite-int8"])
@pytest.mark.parametrize("which", ZOO)
def test_every_runtime_works_or_is_refused_at_start(zoo: dict[str, ZooModel], which: str, runtime: str) -> None:
    model = zoo[which]
    if runtime == "keras" and model.path.is_dir():
        with pytest.raises(RuntimeRefusedError, match=r"runtime .keras. needs a \.keras model"):
            make_runtime(runtime, model.path)
        return
    rt = make_runtime(runtime, model.path)
    x = model.make_inputs(5, seed=2)
    sig = rt.signature
    packed = np.concatenate([x[s.name].reshape(5, -1).astype(np.float32) for s in sig.inputs], axis=1)
    got = sig.split_outputs(rt.predict(packed))
    expected = model.reference(x)
    tol = 0.05 if runtime == "tflite-int8" else 1e-5  # int8 weights: close, not exact
    for spec, y in zip(sig.outputs, got, strict=True):
        np.testing.assert_allclose(np.asarray(y).reshape(expected[spec.name].shape), expected[spec.name], atol=tol)


def test_formats_are_checked_with_one_line_reasons(tmp_path: Path, zoo: dict[str, ZooModel]) -> None:
    assert check_model_path(zoo["saved"].path) == zoo["saved"].path
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"without saved_model\.pb"):
        check_model_path(tmp_path / "empty")
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match="refused"):
        check_model_path(tmp_path / "m.h5")
    s = load_servable(zoo["two_input"].path).signature
    assert {i.name: (i.shape, i.dtype) for i in s.inputs} == zoo["two_input"].inputs
    assert Signature.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def _loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _samples_file(model: ZooModel, folder: Path) -> Path:
    """A user's samples file in a different format per model: .npy, .npz, .json (columnar), .csv."""
    x = model.make_inputs(16, seed=3)
    if model.name == "cnn":
        np.save(folder / "cnn.npy", x["image"])
        return folder / "cnn.npy"
    if model.name == "two_input":
        np.savez(folder / "two.npz", **x)
        return folder / "two.npz"
    if model.name == "saved":
        path = folder / "rows.csv"
        path.write_text("\n".join(",".join(f"{v:.5f}" for v in row) for row in x["x"]))
        return path
    path = folder / "req.json"
    path.write_text(json.dumps({"inputs": {k: v.tolist() for k, v in x.items()}}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("which", ZOO)
def test_loadtest_cli_swarms_the_model_with_generated_and_user_payloads(
    home: Path, tmp_path: Path, zoo: dict[str, ZooModel], which: str
) -> None:
    model = zoo[which]
    common = ["--serve", str(model.path), "--model-name", "m", "--runtime", "tf-function", "-u", "4", "-r", "4",
              "--run-time", "3s", "--slo", "fail_ratio<=0.01", "--slo", "rps>=20"]  # rps: requests did flow
    generated = _loadtest(*common, "--payload-dist", "normal", "--payload-low", "-1", "--payload-high", "1",
                          "--vocab-size", "20")
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "PASS  fail_ratio<=0.01" in generated.stdout
    user = _loadtest(*common, "--samples", str(_samples_file(model, tmp_path)))
    assert user.returncode == 0, user.stdout + user.stderr


def test_import_records_a_train_run_with_signature_and_payloads(registry: Registry,
                                                                zoo: dict[str, ZooModel], tmp_path: Path) -> None:
    keras_run = import_model(registry, zoo["two_input"].path)
    run = registry.get_run(keras_run.run_id)
    assert (run.kind, run.status, run.config["imported"], run.config["format"]) == ("train", "completed", True, "keras")
    s = run.summary
    assert Path(s["model_path"]).is_file() and Path(s["model_path"]).parent == registry.artifacts_dir(run.id)
    assert s["param_count"] == 20 * 3 + (6 + 15) * 2 + 2 and s["size_bytes"] > 0
    assert {i["name"]: (tuple(i["shape"]), i["dtype"]) for i in s["signature"]["inputs"]} == zoo["two_input"].inputs
    rows = payload.load_samples_file(s["model_path"])  # the samples.json beside it, as swarms and sweeps read it
    assert sorted(rows[0]) == ["tokens", "vec"] and all(0 <= t < payload.DEFAULT_VOCAB_SIZE for t in rows[0]["tokens"])

    # A SavedModel uploaded as a .zip of its directory
    archive = tmp_path / "sm.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in zoo["saved"].path.rglob("*"):
            z.write(f, Path("exported") / f.relative_to(zoo["saved"].path))
    saved = import_upload(registry, "sm.zip", archive.read_bytes())
    assert saved.model_path.is_dir() and registry.get_run(saved.run_id).summary["format"] == "saved_model"
    assert check_model_path(saved.model_path) == saved.model_path
    assert registry.get_run(saved.run_id).summary["param_count"] == 50 * 8 + 8 + 8 * 4 + 4

    before = len(registry.list_runs())
    (tmp_path / "bad.h5").write_bytes(b"x")
    for bad in (lambda: import_model(registry, tmp_path / "bad.h5"),
                lambda: import_model(registry, tmp_path / "missing.keras"),
                lambda: import_upload(registry, "m.pkl", b"x"),
                lambda: import_upload(registry, "m.keras", b"not a zip")):
        with pytest.raises(ImportRefusedError) as err:
            bad()
        assert "\n" not in str(err.value) and str(err.value)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside/saved_model.pb", b"x")
    with pytest.raises(ImportRefusedError, match="outside the archive"):
        import_upload(registry, "evil.zip", evil.read_bytes())
    assert len(registry.list_runs()) == before  # nothing half-recorded


@pytest.mark.slow
def test_tuning_cli_sweeps_a_bare_saved_model_after_importing_it(home: Path, zoo: dict[str, ZooModel]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tuning", "--model", str(zoo["saved"].path), "--grid", "max_batch_size=1,8",
         "--users", "2", "--step-s", "2", "--verify-top", "0", "--slo", "fail_ratio<=0.01"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TUNESWARM_HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imported" in proc.stdout
    reg = Registry(home)
    (imported,) = [r for r in reg.list_runs(kind="train") if r.config.get("imported")]
    (sweep,) = reg.list_runs(kind="sweep")
    assert sweep.config["spec"]["model_path"] == imported.summary["model_path"]
    points = sweep.summary["points"]
    assert len(points) == 2 and all(p["requests"] > 0 and p["fail_ratio"] <= 0.01 for p in points)


def test_serving_cli_refuses_a_runtime_the_format_cannot_take_with_exit_2(zoo: dict[str, ZooModel],
                                                                         tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args, needle in [((str(zoo["saved"].path), "--runtime", "keras"), "runtime 'keras' needs a .keras model"),
                         ((str(tmp_path),), "without saved_model.pb")]:
        proc = subprocess.run([sys.executable, "-m", "agent.serving", "--model", *args, "--port", "0"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and needle in proc.stderr


def test_recurrent_model_runs_on_tf_runtimes_and_tflite_refuses_it_at_start(tmp_path: Path) -> None:
    import keras

    tokens = keras.Input((6,), name="tokens", dtype="int32")
    h = keras.layers.LSTM(4, name="lstm")(keras.layers.Embedding(30, 3, name="emb")(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2, name="out")(h))
    model.save(tmp_path / "rnn.keras")
    x = np.random.default_rng(0).integers(0, 30, (3, 6))
    rt = make_runtime("tf-function", tmp_path / "rnn.keras")
    np.testing.assert_allclose(rt.predict(x.astype(np.float32)), np.asarray(model(x.astype(np.int32))), atol=1e-5)
    with pytest.raises(RuntimeRefusedError) as err:
        make_runtime("tflite", tmp_path / "rnn.keras")
    assert str(err.value) == ("runtime 'tflite' cannot run rnn.keras: the TFLite conversion needs TensorFlow ops "
                              "this interpreter lacks (TensorListReserve; typical of recurrent layers); "
                              "use tf-function or xla")
