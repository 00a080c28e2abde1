# Two commands: `make demo` runs the main job on the embedded default, `make test` runs the
# tests. Both create the virtual environment from pyproject.toml + constraints.txt when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv image-tools demo test test-fast lint bench compile lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,torch]'
	touch $(STAMP)

venv: $(STAMP)

# The package stage's image builder: buildah (daemonless) and debootstrap (its base image, since
# nothing can be pulled here). Installed from Debian's packages when missing and apt-get can run;
# without them the stage records "image: skipped (no builder)" and the image test is skipped.
image-tools:
	@if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing buildah and debootstrap (Debian packages) for the image builds"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; \
	else echo "note: no buildah/debootstrap and no root apt-get: image builds will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/modelship demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint image-tools
	$(VENV)/bin/pytest

# everything but the tests marked slow (real servers, pipeline runs, deploys as processes)
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/deploy.py

compile: $(STAMP)
	$(VENV)/bin/modelship compile

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' | { echo "# Pinned set that resolves together on Python 3.11 (pip freeze)."; echo "# Used by 'make venv' as pip -c constraints.txt; regenerate with 'make lock'."; cat; } > constraints.txt

clean:
	rm -rf $(VENV) .modelship .mypy_cache .ruff_cache .pytest_cache
