# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make run    install the locked environment, then the whole loop on the default data (mlops demo)
#   make test   install the locked environment, lint, type-check and run every test
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := python3 -m uv
# The gradient-boosting libraries (XGBoost, LightGBM, CatBoost, onnxmltools); EXTRAS= leaves them out.
EXTRAS ?= --extra boosting

.PHONY: run test down sync uv lint serving-requirements engine engine-down

uv:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"

sync: uv
	$(UV) sync --locked $(EXTRAS)

run: sync
	$(UV) run --locked mlops demo

lint: sync
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy

test: lint
	$(UV) run --locked pytest -n 2 --dist loadfile

down: uv
	$(UV) run --locked mlops down

# The serving image's pinned requirements, re-exported from uv.lock (a test fails when stale).
serving-requirements: sync
	$(UV) run --locked python -m deployments.serving_requirements

# A Docker engine of our own where none runs (see .ci/docker-engine); then: eval "$$(.ci/docker-engine env)"
engine:
	.ci/docker-engine start

engine-down:
	.ci/docker-engine stop
