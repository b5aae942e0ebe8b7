"""TF Serving bundles: SavedModel equality, the config files parsed as TF Serving's own messages, the CLIs.

The messages are TF Serving's ``BatchingParameters`` and ``ModelServerConfig``
subsets, built at test time from descriptors whose field numbers match
tensorflow_serving/servables/tensorflow/session_bundle_config.proto and
tensorflow_serving/config/model_server_config.proto (tensorflow-serving-api would
pull in the full ``tensorflow`` wheel beside tensorflow-cpu, so it is not used).
"""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import tfserving
from agent.serving.config import ServingConfig
from runs.registry import Registry

# -- TF Serving's messages, built from descriptors -----------------------------------------


def _tf_serving_messages() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    FDP = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    f = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/subset.proto", package="tensorflow.serving",
                                           syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def field(msg: Any, name: str, number: int, ftype: int, label: int = FDP.LABEL_OPTIONAL,
              type_name: str | None = None, oneof: int | None = None) -> None:
        fd = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            fd.type_name = type_name
        if oneof is not None:
            fd.oneof_index = oneof

    bp = f.message_type.add(name="BatchingParameters")
    for name, number in (("max_batch_size", 1), ("batch_timeout_micros", 2), ("max_enqueued_batches", 3),
                         ("num_batch_threads", 4)):
        field(bp, name, number, FDP.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value")
    field(bp, "thread_pool_name", 5, FDP.TYPE_MESSAGE, type_name=".google.protobuf.StringValue")
    field(bp, "allowed_batch_sizes", 6, FDP.TYPE_INT64, FDP.LABEL_REPEATED)
    field(bp, "pad_variable_length_inputs", 7, FDP.TYPE_BOOL)

    mc = f.message_type.add(name="ModelConfig")
    field(mc, "name", 1, FDP.TYPE_STRING)
    field(mc, "base_path", 2, FDP.TYPE_STRING)
    field(mc, "model_platform", 4, FDP.TYPE_STRING)
    mcl = f.message_type.add(name="ModelConfigList")
    field(mcl, "config", 1, FDP.TYPE_MESSAGE, FDP.LABEL_REPEATED, ".tensorflow.serving.ModelConfig")
    msc = f.message_type.add(name="ModelServerConfig")
    msc.oneof_decl.add(name="config")
    field(msc, "model_config_list", 1, FDP.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelConfigList", oneof=0)
    pool.Add(f)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("BatchingParameters", "ModelServerConfig")}


@pytest.fixture(scope="module")
def messages() -> dict[str, Any]:
    return _tf_serving_messages()


def _parse(messages: dict[str, Any], kind: str, text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, messages[kind]())


# -- pure text -----------------------------------------------------------------------------


def test_batching_parameters_parse_as_tf_servings_message(messages: dict[str, Any]) -> None:
    cfg = ServingConfig(max_batch_size=32, batch_timeout_ms=1.5, num_batch_threads=2, max_enqueued_batches=100,
                        allowed_batch_sizes=(8, 16, 32))
    msg = _parse(messages, "BatchingParameters", tfserving.tf_serving_batching_text(cfg, comment="two\nlines"))
    assert msg.max_batch_size.value == 32 and msg.batch_timeout_micros.value == 1500
    assert msg.num_batch_threads.value == 2 and msg.max_enqueued_batches.value == 100
    assert list(msg.allowed_batch_sizes) == [8, 16, 32] and msg.pad_variable_length_inputs is False
    # TF Serving needs a batch thread; our 0 (batches on the event loop) is shipped as 1.
    zero = _parse(messages, "BatchingParameters",
                  tfserving.tf_serving_batching_text(ServingConfig(num_batch_threads=0)))
    assert zero.num_batch_threads.value == 1 and not zero.allowed_batch_sizes


def test_models_config_parses_as_model_server_config(messages: dict[str, Any]) -> None:
    msg = _parse(messages, "ModelServerConfig", tfserving.models_config_text("digits-cnn", '/srv/a "b"/digits-cnn'))
    (config,) = msg.model_config_list.config
    assert (config.name, config.base_path, config.model_platform) == (
        "digits-cnn", '/srv/a "b"/digits-cnn', "tensorflow")
    with pytest.raises(ValueError, match="model name"):
        tfserving.models_config_text("a/b", "/x")


def test_command_lines_carry_ports_batching_threads_and_deadline(tmp_path: Path) -> None:
    cfg = ServingConfig(intra_op_threads=2, inter_op_threads=0, request_timeout_ms=250, workers=3)
    cmds = tfserving.serve_commands(tmp_path, cfg, rest_port=8601, grpc_port=8600)
    for flag in ("--rest_api_port=8601", "--port=8600", "--enable_batching=true",
                 f"--model_config_file={tmp_path}/models.config",
                 f"--batching_parameters_file={tmp_path}/batching_parameters.txt",
                 "--tensorflow_intra_op_parallelism=2", "--rest_api_timeout_in_ms=250"):
        assert flag in cmds.local
    assert "inter_op" not in cmds.local  # 0 = library default: no flag
    for part in ("docker run", "-p 8601:8601", "-p 8600:8600", f"-v {tmp_path}:/models:ro", "tensorflow/serving",
                 "--model_config_file=/models/models.docker.config",
                 "--batching_parameters_file=/models/batching_parameters.txt"):
        assert part in cmds.docker
    assert any("workers=3" in note and "replicas" in note for note in tfserving.own_knobs(cfg))


# -- real exports --------------------------------------------------------------------------


def _serving_default(saved_model: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    (out,) = loaded.signatures["serving_default"](features=tf.constant(x)).values()
    return out.numpy()


def test_exported_mlp_serves_the_keras_models_outputs(trained_model: Path, tmp_path: Path,
                                                      messages: dict[str, Any]) -> None:
    from agent.export import load_model, load_samples

    cfg = ServingConfig(max_batch_size=16, batch_timeout_ms=3, allowed_batch_sizes=(4, 16))
    bundle = tfserving.write_bundle(tmp_path / "ship", trained_model, cfg, name="digits")
    assert bundle.saved_model == (tmp_path / "ship" / "digits" / "1").resolve()
    x = np.asarray(load_samples(trained_model)[:32], np.float32)
    np.testing.assert_allclose(_serving_default(bundle.saved_model, x),
                               load_model(trained_model).predict(x, verbose=0), atol=1e-5)

    batching = _parse(messages, "BatchingParameters", bundle.batching.read_text())
    assert batching.max_batch_size.value == 16 and list(batching.allowed_batch_sizes) == [4, 16]
    local = _parse(messages, "ModelServerConfig", bundle.models_config.read_text()).model_config_list.config[0]
    docker = _parse(messages, "ModelServerConfig", bundle.docker_config.read_text()).model_config_list.config[0]
    assert Path(local.base_path) == bundle.saved_model.parent and docker.base_path == "/models/digits"
    assert ServingConfig.from_json_file(bundle.serving_config) == cfg
    md = bundle.serve_md.read_text()
    assert "tensorflow_model_server" in md and "docker run" in md and "/v1/models/digits:predict" in md
    request = json.loads((bundle.root / "request.json").read_text())
    assert np.asarray(request["instances"]).shape == (2, 64)

    again = tfserving.write_bundle(tmp_path / "ship", trained_model, cfg, name="digits")
    assert again.version == 2 and again.saved_model.is_dir()  # a re-ship adds a version TF Serving picks up
    names = zipfile.ZipFile(BytesIO(tfserving.zip_bundle(bundle.root))).namelist()
    assert {"SERVE.md", "models.config", "batching_parameters.txt", "digits/1/saved_model.pb",
            "digits/2/saved_model.pb"} <= set(names)


def test_agent_tfserving_cli_exports_a_run_and_refuses_bad_usage(
        trained_model: Path, registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_id = registry.create_run("train", {}, status="completed")
    registry.update_summary(run_id, {"model_path": str(trained_model)})
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"max_batch_size": 8, "batch_timeout_ms": 0.5}))
    out = tmp_path / "out"
    assert tfserving.main(["--run-id", run_id, "--out", str(out), "--config", str(cfg_file), "--version", "7"]) == 0
    assert (out / "model" / "7" / "saved_model.pb").is_file()
    assert "batch_timeout_micros { value: 500 }" in (out / "batching_parameters.txt").read_text()
    capsys.readouterr()

    empty = registry.create_run("train", {}, status="failed")
    for argv, expected in (
        (["--run-id", "nope", "--out", str(out)], "nope"),
        (["--run-id", empty, "--out", str(out)], "has no model"),
        (["--model", str(tmp_path / "m.h5"), "--out", str(out)], ".h5 files are refused"),
        (["--run-id", run_id, "--out", str(out), "--name", "a/b"], "model name"),
        (["--run-id", run_id, "--out", str(out), "--version", "7"], "already exists"),
    ):
        assert tfserving.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as exc:
        tfserving.main(["--run-id", run_id])  # --out is required
    assert exc.value.code == 2


def test_tuning_ships_a_finished_sweeps_recommendation(trained_model: Path, registry: Registry,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tuning.__main__ import main as tuning_main
    from tuning.sweep import SweepSpec, create_sweep

    spec = SweepSpec(model_path=str(trained_model), space={"max_batch_size": [1, 8]}, users=(2,),
                     slos=("p95<=50ms",), verify_top=0)
    run_id = create_sweep(registry, spec)
    registry.update_summary(run_id, {
        "recommended_config": ServingConfig(max_batch_size=8, batch_timeout_ms=1.0).to_dict(),
        "recommendation": {"best": {"label": "max_batch_size=8", "capacity_rps": 1234.0},
                           "constraints": ["p95<=50ms"], "met": True},
    })
    registry.set_status(run_id, "completed")
    out = tmp_path / "shipped"
    assert tuning_main(["--run-id", run_id, "--export-tfserving", str(out)]) == 0
    text = (out / "batching_parameters.txt").read_text()
    assert text.startswith(f"# TuneSwarm sweep {run_id}: max_batch_size=8, 1234 req/s")
    assert "max_batch_size { value: 8 }" in text and (out / "model" / "1" / "saved_model.pb").is_file()
    assert "wrote TF Serving bundle" in capsys.readouterr().out

    bare = create_sweep(registry, spec)
    registry.set_status(bare, "completed")
    assert tuning_main(["--run-id", bare, "--export-tfserving", str(tmp_path / "x")]) == 1
    assert "no recommended config" in capsys.readouterr().err
    assert tuning_main(["--mode", "models", "--export-tfserving", str(tmp_path / "y")]) == 2


# -- the pages' Ship sections ---------------------------------------------------------------------

PAGES = Path(__file__).resolve().parent.parent / "dashboard" / "pages"


def _click_ship(page: str, key_prefix: str) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / page), default_timeout=120).run()
    assert not at.exception
    (button,) = [b for b in at.button if b.key and b.key.startswith(key_prefix) and b.key.endswith(".write")]
    assert button.label == "Write TF Serving bundle"
    button.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Download bundle (.zip)" in [b.label for b in at.get("download_button")]
    assert any("tensorflow_model_server" in m.value for m in at.markdown)  # SERVE.md is shown
    return at


def test_tune_page_ships_the_recommendation(trained_model: Path, home: Path, registry: Registry,
                                            messages: dict[str, Any]) -> None:
    from tests.test_tuning_logic import RECORDED
    from tuning.ship import ship_dir
    from tuning.sweep import SweepSpec, create_sweep, finalize

    spec = SweepSpec(model_path=str(trained_model), space={"max_batch_size": [1, 8, 32],
                                                           "batch_timeout_ms": [0.0, 2.0]},
                     users=(1, 16, 64), slos=("p95<=50ms", "fail_ratio<=0.01"))
    run_id = create_sweep(registry, spec, name="digits sweep")
    registry.update_summary(run_id, {"points": [p.to_dict() for p in RECORDED]})
    finalize(registry, run_id, spec, list(RECORDED))
    registry.set_status(run_id, "completed")

    at = _click_ship("tune.py", "tune.ship.")
    root = ship_dir(registry, run_id)
    batching = _parse(messages, "BatchingParameters", (root / "batching_parameters.txt").read_text())
    assert batching.max_batch_size.value == 32 and batching.batch_timeout_micros.value == 2000  # b32 t2ms
    assert (root / "model" / "1" / "saved_model.pb").is_file()
    assert "Write again (adds a version)" in [b.label for b in at.button]


def test_train_page_ships_a_finished_model_run(trained_model: Path, home: Path, registry: Registry) -> None:
    run_id = registry.create_run("train", {"model": {}, "data": {"dataset": "digits"}}, name="train digits")
    registry.update_summary(run_id, {"model_path": str(trained_model), "test_metrics": {"accuracy": 0.9},
                                     "data": {"task": "classification"}})
    registry.set_status(run_id, "completed")
    _click_ship("train.py", "train.ship.")
    assert (registry.artifacts_dir(run_id) / "tfserving" / "model" / "1" / "saved_model.pb").is_file()


def test_tune_page_ship_error_is_one_line(home: Path, registry: Registry, tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.test_tuning_logic import RECORDED
    from tuning.sweep import SweepSpec, create_sweep, finalize

    spec = SweepSpec(model_path=str(tmp_path / "gone" / "model.keras"), space={"max_batch_size": [1, 8, 32],
                                                                             "batch_timeout_ms": [0.0, 2.0]},
                     users=(1, 16, 64), slos=("p95<=50ms", "fail_ratio<=0.01"))
    run_id = create_sweep(registry, spec)
    registry.update_summary(run_id, {"points": [p.to_dict() for p in RECORDED]})
    finalize(registry, run_id, spec, list(RECORDED))
    registry.set_status(run_id, "completed")
    at = AppTest.from_file(str(PAGES / "tune.py"), default_timeout=60).run()
    at.button(key=f"tune.ship.{run_id}.write").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("could not write the bundle:") and "no such model file" in error and "\n" not in error
