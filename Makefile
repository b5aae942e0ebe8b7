# The whole set-up on a fresh machine with Python 3.11: `make run` or `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: setup run test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install requirements-dev.txt (runtime + test tools; only when they changed)

run: $(STAMP)  ## set up, then start the dashboard on http://localhost:8501
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.address 127.0.0.1

test: $(STAMP)  ## set up, then run the whole test suite
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)  ## benchmarks print side-by-side ratios; they are not tests
	$(PY) bench/training.py
	$(PY) bench/serving.py
	$(PY) bench/locust_capacity.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
