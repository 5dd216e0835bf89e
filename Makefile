# The two commands of the README: `make run` and `make test`. Everything installs from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-serve.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-12)
PY_FILES := modelserver handlers archive_scripts load_tests tests

.PHONY: install browser run archives tiny-models test lint unit live clean bench hops soak overload audit scale traffic image

install: $(STAMP)

$(STAMP): requirements.txt requirements-serve.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pip setuptools -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	rm -f $(VENV)/.installed-* && touch $@

## Debian's Chromium for the browser test of /docs (tests/live/test_docs_browser.py), installed
## with apt-get when it is missing and this user may (root). Never a download of playwright's own.
## Where it cannot be installed this says why, and the test skips with that reason.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make browser: $(CHROMIUM) is missing and apt-get cannot run as this user: the browser test will skip" >&2; \
	  exit 0; fi; \
	echo "make browser: installing Debian's chromium for the browser test"; \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "make browser: chromium could not be installed: the browser test will skip" >&2

## Build what is missing, start TorchServe and Envoy, serve on $$PORT (default 3000).
run: install
	exec $(PY) -m modelserver.launcher

## Scale a running model's workers (management API on loopback, key from $(RUN_DIR)):
## make scale MODEL=crystal_sklearn WORKERS=2
RUN_DIR ?= run
scale: install
	@test -n "$(MODEL)" -a -n "$(WORKERS)" || { echo "usage: make scale MODEL=<name> WORKERS=<n>" >&2; exit 2; }
	$(PY) -m modelserver.launcher.manage --runtime-dir $(RUN_DIR) scale $(MODEL) $(WORKERS)

## A model's candidate while serving (docs/operations.md, "Upgrading a model"): its canary and
## shadow shares, promotion or rollback, through Envoy's runtime (no restart, no dropped request):
## make traffic MODEL=crystal_sklearn CANARY=25 | SHADOW=50 | PROMOTE=1 | ROLLBACK=1; alone, the shares.
traffic: install
	$(PY) -m modelserver traffic --runtime-dir $(RUN_DIR) $(MODEL) \
	  $(if $(CANARY),--canary $(CANARY)) $(if $(SHADOW),--shadow $(SHADOW)) \
	  $(if $(PROMOTE),--promote) $(if $(ROLLBACK),--rollback)

## The container image, tagged $(IMAGE) (default modelserver:latest): the pinned Python base, or
## one built from Debian's packages where no registry answers; a proxy's CA bundle as a build
## secret; torch from $$TORCH_WHEELS (or pip's find-links folder) where PyTorch's index is out of
## reach. Unchanged inputs reuse the image. More: IMAGE_ARGS="--build-arg BUILD_MODELS=0 --force".
IMAGE ?= modelserver:latest
image: install
	$(PY) -m modelserver image --tag $(IMAGE) $(IMAGE_ARGS)

## Build (or reuse) every archive of models.yaml into model_store/; a model whose source is out of
## reach is skipped with the variable that fixes it. BUILD_ARGS=--strict fails on it instead.
archives: install
	$(PY) -m archive_scripts.build_archives $(BUILD_ARGS)

## The tiny text checkpoints (random weights; the same files on every build) in $(TINY_DIR), for
## the text routes where the Hub is out of reach; prints the variables that serve them:
## env $$(make -s tiny-models) make run
TINY_DIR ?= tiny-models
tiny-models: install
	@$(PY) -m modelserver tiny-models $(TINY_DIR)

lint: install
	$(VENV)/bin/ruff check $(PY_FILES)
	$(VENV)/bin/pylint --fail-under=9.5 $(PY_FILES)

## Lint, then every test: pure model code, handlers, and the live stack.
test: install browser lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

live: install browser
	$(PY) -m pytest tests/live

clean:
	rm -rf model_store/*.mar model_store/.builds run

## The benchmark against the naive peers and the serving libraries users pick (MLServer, LitServe;
## their virtualenvs installed once under load_tests/results/bench/peer-envs), about 70 minutes;
## results in load_tests/results/bench. The tabular model alone, about 15 minutes:
## make bench BENCH_ARGS="--scenarios crystal --duration 10 --warmup 3"
bench: install
	$(PY) -m load_tests.bench $(if $(BENCH_MODEL),--model $(BENCH_MODEL)) $(BENCH_ARGS)

## Where a /sklearn request's time goes, hop by hop, at 1 and 64 clients (about 2 minutes;
## results in load_tests/results/hops). make hops HOPS_ARGS="--torchserve batchSize=1"
hops: install
	$(PY) -m load_tests.hops $(HOPS_ARGS)

## The soak test: 10 minutes of steady mixed load on every public route; fails on any
## error or RSS growth >= 5% (results in load_tests/results/soak). make soak SOAK_ARGS="--duration 90"
soak: install
	$(PY) -m load_tests.soak $(SOAK_ARGS)

## Overload: fill-mask offered 4x what it sustains; excess refused at once, the rest
## served with a bounded wait, /healthcheck answering; then an idle-connection flood and crowds
## on /metrics, /openapi.json and /v2/health/ready, with probes answered within 1 s
## (results in load_tests/results/overload).
overload: install
	$(PY) -m load_tests.overload $(OVERLOAD_ARGS)

## Known vulnerabilities in every installed package (pip-audit; accepted ones: .ci/audit-accepted.txt).
audit: install
	.ci/audit

## The hashed locks, from requirements-image.in / requirements-deploy.in under constraints.txt:
## requirements-image.txt (the Dockerfile's --require-hashes install) and requirements-deploy.txt.
## torch's +cpu build comes from $$TORCH_INDEX_URL (PyTorch's CPU index; empty: pip's own config).
.PHONY: lock
lock: install
	@torch_index="$${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"; \
	compile=(env CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  $${torch_index:+--extra-index-url "$$torch_index"}); \
	set -x; \
	"$${compile[@]}" --output-file requirements-image.txt requirements-image.in && \
	"$${compile[@]}" --output-file requirements-deploy.txt requirements-deploy.in && \
	$(PY) -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: --require-hashes \
	  $${torch_index:+--extra-index-url "$$torch_index"} -r requirements-image.txt
