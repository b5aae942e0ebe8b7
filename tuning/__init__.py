"""Tuning: sweeps over serving (and model) parameters, SLO-constrained recommendation, Pareto fronts.

- ``points``     a measured load step of one config (plain data, JSON round-trip)
- ``ladder``     the concurrency ladder and Model Analyzer's early-stop rule
- ``space``      the search space; grid and coordinate-ascent strategies
- ``recommend``  constraints (``loadtest.slo``), objectives, recommendation + explanation
- ``pareto``     dominance and the Pareto front
- ``exports``    ServingConfig JSON and TF Serving ``batching_parameters`` text
- ``sweep``      the resumable, stoppable serving-sweep job (and confirmation runs)
- ``model_sweep`` train-serve-load each model of a small grid
- ``__main__``   the CLI: ``python -m tuning --help``
"""
