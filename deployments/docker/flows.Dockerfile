# The image flow runs use on the Docker and Kubernetes work pools: the project and its locked
# environment (no dev tools). `python -m deployments.flows_image` builds it (context: this file,
# pyproject.toml, uv.lock, README.md, the packages, models/ and deployments/docker/ca-certificates/:
# extra CA certificates for a TLS-intercepting proxy, used by the build only); a team's CI can as well:
#   docker build -f deployments/docker/flows.Dockerfile -t ghcr.io/your-org/mlops-flows:$(git rev-parse --short HEAD) .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLOPS_HOME=/var/lib/mlops \
    HOME=/tmp \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /opt/mlops
COPY deployments/docker/ca-certificates/ /tmp/extra-ca/
RUN set -eu; \
    bundle=/etc/ssl/certs/ca-certificates.crt; \
    if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then cat "$bundle" /tmp/extra-ca/*.crt > /tmp/ca-bundle.crt; \
    else cp "$bundle" /tmp/ca-bundle.crt; fi; \
    python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check --cert /tmp/ca-bundle.crt \
        --index-url "$PIP_INDEX_URL" uv==0.13.9
# The gradient-boosting libraries train in flow runs too; --build-arg UV_EXTRAS= leaves them out.
# XGBoost and LightGBM load the OpenMP runtime (libgomp), which slim Debian bases leave out.
ARG UV_EXTRAS="--extra boosting"
RUN if [ -n "$UV_EXTRAS" ]; then apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; fi
COPY pyproject.toml uv.lock README.md ./
RUN SSL_CERT_FILE=/tmp/ca-bundle.crt /opt/uv/bin/uv sync --locked --no-dev --group team $UV_EXTRAS --no-install-project --no-cache
COPY flows flows
COPY tasks tasks
COPY serving serving
COPY mlops mlops
COPY mlflow_server mlflow_server
COPY deployments deployments
COPY cli cli
# The model specs the flows read (MLOPS_MODELS_DIR points elsewhere to mount a team's own).
COPY models models
RUN SSL_CERT_FILE=/tmp/ca-bundle.crt /opt/uv/bin/uv sync --locked --no-dev --group team $UV_EXTRAS --no-cache \
 && rm -rf /opt/uv /tmp/ca-bundle.crt /tmp/extra-ca \
 && mkdir -p /var/lib/mlops && chown 65532:65532 /var/lib/mlops
USER 65532:65532
# The commit the flows record as their code (no .git in the image); last, so it costs no cache.
ARG GIT_COMMIT=unknown
ENV MLOPS_GIT_COMMIT=${GIT_COMMIT}
