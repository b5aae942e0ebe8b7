"""Ship a sweep's recommendation: the swept model as a TF Serving bundle with the recommended batching.

The writing is ``agent.tfserving.write_bundle``; this module only composes what a
sweep recorded (its model, its recommended config, the label and capacity that
justify it) so the CLI and the Tune page ship the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.serving.config import ServingConfig
from agent.tfserving import BUNDLE_DIRNAME, Bundle, write_bundle
from runs.registry import Registry
from tuning.sweep import MODEL_NAME, SweepSpec


def ship_dir(registry: Registry, run_id: str) -> Path:
    return registry.artifacts_dir(run_id) / BUNDLE_DIRNAME


def ship_sweep(
    registry: Registry,
    run_id: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    config: ServingConfig | None = None,
    label: str | None = None,
    name: str = MODEL_NAME,
) -> Bundle:
    """Write the TF Serving bundle for sweep ``run_id`` (into its artifacts unless ``out_dir`` is given).

    ``config`` defaults to the sweep's recorded recommendation; the Tune page passes
    the one it shows (the constraints may have been re-ranked there).
    """
    run = registry.get_run(run_id)
    if run.kind != "sweep" or run.config.get("mode", "serving") != "serving":
        raise ValueError(f"run {run_id} is not a serving sweep; ship a model run with python -m agent.tfserving")
    spec = SweepSpec.from_dict(run.config["spec"])
    rec = run.summary.get("recommendation") or {}
    if config is None:
        recorded = run.summary.get("recommended_config")
        if not recorded:
            raise ValueError(f"sweep {run_id} has no recommended config (no config met its constraints"
                             f"{'' if run.status == 'completed' else '; it is ' + run.status}); nothing to ship")
        config = ServingConfig.from_dict(recorded)
        best = rec.get("best") or {}
        label = label or best.get("label")
        if label and best.get("capacity_rps"):
            label += f", {best['capacity_rps']:.0f} req/s within SLO"
    label = label or "chosen config"
    slos = " and ".join(rec.get("constraints") or spec.slos)
    comment = f"TuneSwarm sweep {run_id}: {label} (SLO {slos})"
    return write_bundle(out_dir if out_dir is not None else ship_dir(registry, run_id), spec.model_path, config,
                        name=name, comment=comment, source=f"sweep {run_id}'s recommendation, {label}")
