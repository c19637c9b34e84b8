# rotator: rotate X account avatars on a schedule through the Xquik API.
# Build:  docker build -t rotator .
# Any Debian-based Python image works:  --build-arg PYTHON_IMAGE=python:3.13-slim-bookworm
# Run:    see compose.yaml and docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: a self-contained venv at /opt/venv from the pinned constraints ---------------
FROM ${PYTHON_IMAGE} AS build
# Never run as a container; says so explicitly for hadolint's DL3057, which checks every stage.
HEALTHCHECK NONE

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
RUN python3 -m venv /opt/venv
# README.md is the package's long description (pyproject.toml names it).
COPY pyproject.toml constraints.txt README.md ./
COPY rotator ./rotator
RUN /opt/venv/bin/python3 -m pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/python3 -c "import rotator"

# --- runtime: the venv, a numeric non-root user, nothing else ------------------------------
FROM ${PYTHON_IMAGE}
# Re-declared: an ARG before the first FROM is not visible inside a stage.
ARG PYTHON_IMAGE

# OCI annotations; the version must match pyproject.toml (tests/deploy checks it).
LABEL org.opencontainers.image.title="rotator" \
      org.opencontainers.image.description="Rotate X (Twitter) account avatars on a schedule through the Xquik API" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

COPY --from=build /opt/venv /opt/venv

# /state must be writable by the daemon's uid; a fresh named volume copies this ownership.
RUN mkdir -p /state /images /config \
    && chown 10001:10001 /state \
    && chmod 0700 /state

# STATE_DIRECTORY is the variable systemd sets too; the config falls back to it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    ROTATOR_CONFIG=/config/rotator.toml \
    STATE_DIRECTORY=/state

VOLUME ["/state", "/images"]
USER 10001:10001

# `rotator health` reads the heartbeat the event loop writes into the state.
HEALTHCHECK --interval=60s --timeout=10s --start-period=5m --retries=3 \
    CMD ["rotator", "health"]

# rotator itself is PID 1: it handles SIGTERM (drain at most 10 s, exit 0) and SIGHUP.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rotator"]
CMD ["run"]
