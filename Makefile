# Two commands: `make demo` runs the main job on the embedded default, `make test` runs the
# tests. Both create the virtual environment from pyproject.toml + constraints.txt when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv image-tools demo test test-fast fuzz lint bench compile lock clean rehearse pipeline-image gpu-bundle

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,torch]'
	touch $(STAMP)

venv: $(STAMP)

# The package stage's image builder: buildah (daemonless) and debootstrap (its base image, since
# nothing can be pulled here), docker-registry (distribution) for the push test, and Prometheus
# (2.42), which the analysis' queries run on in the tests. Installed from Debian's packages when
# missing and apt-get can run; without them the stage records "image: skipped (no builder)" and
# the tests that need them are skipped.
image-tools:
	@if command -v buildah >/dev/null && command -v debootstrap >/dev/null && command -v docker-registry >/dev/null && command -v prometheus >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing buildah, debootstrap, docker-registry and prometheus (Debian packages) for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap docker-registry prometheus >/dev/null; \
	else echo "note: no buildah/debootstrap/docker-registry/prometheus and no root apt-get: the tests that need them will be skipped"; fi

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

# The property tests and the fuzzing of every HTTP API with many more examples than CI runs
# (100 per property, 25 per fuzzed operation and mode there): EXAMPLES per property, a quarter
# of it per operation. Minutes, not seconds.
EXAMPLES ?= 2000
fuzz: $(STAMP)
	MODELSHIP_FUZZ_EXAMPLES=$(EXAMPLES) $(VENV)/bin/pytest -n 0 -v tests/test_properties.py tests/test_hostile.py

# The cluster rehearsal: the compiled deploy pipeline with every task in its own pod, sharing
# only a real MLflow server, a real S3 API (moto, which also carries KFP's artifacts) and a real
# image registry (tests/rehearsal.py). Each pod a container of the pipeline image built from this
# checkout; IMAGE=REF: of that image instead; IMAGE=process: each pod a process.
IMAGE ?=
rehearse: $(STAMP) image-tools
	MODELSHIP_REHEARSAL_IMAGE=$(IMAGE) $(VENV)/bin/pytest -n 0 -v tests/test_rehearsal.py

# The image every pipeline task runs (Containerfile): docker where an engine answers, else buildah
# on a base made here with debootstrap. PIPELINE_IMAGE names it; EXTRAS=torch adds PyTorch.
PIPELINE_IMAGE ?= localhost/modelship:0.1.0
EXTRAS ?=
pipeline-image: $(STAMP) image-tools
	rm -rf dist && $(PY) -m build --wheel --outdir dist . >/dev/null
	@mkdir -p build
	@if docker info >/dev/null 2>&1; then \
	  docker buildx build --load --build-arg EXTRAS=$(EXTRAS) -t $(PIPELINE_IMAGE) -f Containerfile . ; \
	else \
	  base=$$($(PY) -c "from pathlib import Path; from modelship.components.package.image import Buildah; print(Buildah().ensure_base(Path('build/base-image.log')))") && \
	  buildah --storage-driver vfs bud --isolation chroot --build-arg BASE_IMAGE=$$base \
	    --build-arg EXTRAS=$(EXTRAS) --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt \
	    -t $(PIPELINE_IMAGE) -f Containerfile . ; \
	fi
	@echo "built $(PIPELINE_IMAGE); push it, then: modelship compile --image REGISTRY/modelship@sha256:..."

bench: $(STAMP)
	$(PY) benchmarks/deploy.py

compile: $(STAMP)
	$(VENV)/bin/modelship compile

# What benchmarks/gpu.sh needs on a GPU machine that reaches no package index, in .gpu/ (about
# 60 MiB; downloads 244 MiB, so never part of `make test`). See docs/gpu.md.
gpu-bundle: $(STAMP)
	$(PY) benchmarks/gpu_bundle.py

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' | { echo "# Pinned set that resolves together on Python 3.11 (pip freeze)."; echo "# Used by 'make venv' as pip -c constraints.txt; regenerate with 'make lock'."; cat; } > constraints.txt

clean:
	rm -rf $(VENV) .modelship .mypy_cache .ruff_cache .pytest_cache
