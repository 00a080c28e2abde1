# Two commands: `make demo` runs the main job on the embedded default, `make test` runs the
# tests. Both create the virtual environment from pyproject.toml + constraints.txt when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench compile lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,torch]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modelship demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) benchmarks/deploy.py

compile: $(STAMP)
	$(VENV)/bin/modelship compile

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' | { echo "# Pinned set that resolves together on Python 3.11 (pip freeze)."; echo "# Used by 'make venv' as pip -c constraints.txt; regenerate with 'make lock'."; cat; } > constraints.txt

clean:
	rm -rf $(VENV) .modelship .mypy_cache .ruff_cache .pytest_cache
