"""The Locust side of TuneSwarm: swarms against TF Serving-compatible endpoints.

- ``loadtest.runner``: ``LoadTestConfig``, ``start_loadtest`` / ``stop_loadtest`` /
  ``run_loadtest`` / ``load_result`` (runs as registry jobs with live frames);
- ``loadtest.slo``: ``parse_slo`` / ``evaluate`` (SLO gates);
- ``loadtest.shapes``: load shapes as pure schedules;
- ``loadtest.results``: parsing of Locust's CSV output and the run summary;
- ``loadtest.locustfile``: the Locust file (the only module importing locust);
- ``python -m loadtest``: the headless CLI with exit codes for CI.

Importing the package loads neither Locust nor TensorFlow.
"""
