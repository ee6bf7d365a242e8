# testmesh-reconciler container image.
#
#   docker build -t ghcr.io/example/testmesh-reconciler:0.1.0 .
#   docker run --rm -p 5016:5016 -e TESTMESH_CONFIG_REPO=https://gitea.internal/platform/testmesh-config.git \
#       ghcr.io/example/testmesh-reconciler:0.1.0
#
# Two stages: the builder turns the source tree into wheels (the package and every
# dependency, with the `postgres` extra so the same image serves one replica on SQLite and
# several on PostgreSQL); the final stage installs those wheels offline and carries no
# build tools, compilers or source tree. Needs BuildKit (Docker 23+ default) or buildah
# for `RUN --mount=type=bind,from=...`.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel is built from (see [tool.hatch.build] in pyproject.toml).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY testmesh_reconciler ./testmesh_reconciler
COPY examples/config-repo ./examples/config-repo

# `pip wheel .` builds the project wheel through its PEP 517 backend (hatchling) and
# collects the wheels of all runtime dependencies next to it.
RUN pip wheel ".[postgres]" -w /wheels \
 && ls -l /wheels

# ------------------------------------------------------------------------------ final
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="testmesh-reconciler" \
      org.opencontainers.image.description="GitOps-native reconciler for TestMesh test automation" \
      org.opencontainers.image.licenses="Apache-2.0"

# git + openssh-client: the daemon clones and fetches the config repo (HTTPS or SSH).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Non-root user with a fixed uid/gid (the Kubernetes manifests use runAsUser 10001 and
# fsGroup 10001). Its home is the data dir so git/ssh find a writable $HOME even with a
# read-only root filesystem.
RUN groupadd --system --gid 10001 testmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/testmesh \
        --no-create-home --shell /usr/sbin/nologin testmesh \
 && mkdir -p /var/lib/testmesh \
 && chown 10001:10001 /var/lib/testmesh \
 && chmod 0750 /var/lib/testmesh

# Install the built wheel (and its dependency wheels) from the builder stage, offline; the
# wheels are bind-mounted, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "testmesh-reconciler[postgres]" \
 && testmesh-reconciler --help > /dev/null

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/testmesh \
    TESTMESH_DATA_DIR=/var/lib/testmesh \
    TESTMESH_LISTEN=0.0.0.0:5016

VOLUME ["/var/lib/testmesh"]
WORKDIR /var/lib/testmesh

USER 10001:10001

EXPOSE 5016

# No curl in the image: a Python one-liner asks /healthz on the port of TESTMESH_LISTEN.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('TESTMESH_LISTEN', '0.0.0.0:5016').rsplit(':', 1)[-1]; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4).close()"]

ENTRYPOINT ["testmesh-reconciler"]
CMD ["serve"]
