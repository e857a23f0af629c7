# Two entry points on a fresh machine: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install demo demo-core demo-vision demo-nlp demo-medical demo-table test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: train and evaluate joint models on the bundled real data of every domain.
demo: demo-core demo-vision demo-nlp demo-medical demo-table

demo-core: $(STAMP)
	rm -rf runs/demo/core
	$(VENV)/bin/jointtrain train scripts/configs/core_digits.yaml --set output_dir=runs/demo/core

demo-vision: $(STAMP)
	rm -rf runs/demo/vision
	$(PY) scripts/train_vision.py --output-dir runs/demo/vision

demo-nlp: $(STAMP)
	rm -rf runs/demo/nlp
	$(PY) scripts/train_nlp.py --output-dir runs/demo/nlp

demo-medical: $(STAMP)
	rm -rf runs/demo/medical
	$(PY) scripts/train_medical.py --output-dir runs/demo/medical

demo-table: $(STAMP)
	rm -rf runs/demo/table
	$(VENV)/bin/jointtrain train scripts/configs/table_cardio.yaml --set output_dir=runs/demo/table

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(OFFLINE) $(PY) -m pytest -n auto  # pytest-xdist: one worker per core, one thread each (tests/conftest.py)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
