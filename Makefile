# kdcore: `make test` (what CI runs), `make report PROFILE=smoke|cpu|full|gpu [NOTEBOOKS="02 05"]`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?=
NOTEBOOKS ?=
STAMP := $(VENV)/.installed

.PHONY: venv test report pages bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, timm, papermill, nbconvert, sklearn, mathjax" && touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check kdcore tests benchmarks probes
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

pages: $(STAMP)  # re-render the published pages from the run store only (never trains)
	$(PY) -m kdcore report --from-store $(if $(PROFILE),--profile $(PROFILE),) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS),)

report: $(STAMP)
	$(PY) -m kdcore report $(if $(PROFILE),--profile $(PROFILE),) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS),)

bench: $(STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/group_bench.py

clean:
	rm -rf $(VENV) .pytest_cache results/smoke results/.*.partial-*
