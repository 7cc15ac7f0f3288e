# The image flow runs use on the Docker and Kubernetes work pools (deployments/prefect.team.yaml):
# the project and its locked environment, no dev tools. Built by a team's CI, e.g.
#   docker build -f deployments/docker/flows.Dockerfile -t ghcr.io/your-org/mlops-flows:$(git rev-parse --short HEAD) .
# (Written down and checked as text here; not built in this project's CI, whose machines have no registry.)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLOPS_HOME=/var/lib/mlops
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /opt/mlops
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --group team --no-install-project
COPY flows flows
COPY tasks tasks
COPY serving serving
COPY mlops mlops
COPY mlflow_server mlflow_server
COPY deployments deployments
COPY cli cli
# The model specs the flows read (MLOPS_MODELS_DIR points elsewhere to mount a team's own).
COPY models models
RUN uv sync --locked --no-dev --group team && mkdir -p /var/lib/mlops && chown 65532:65532 /var/lib/mlops
USER 65532:65532
