# The ONNX model server with one model version baked in.
#
# Build context (made by tasks/image.py): this file, serving-requirements.txt (exported from
# uv.lock), serving/ (the server's .py files), bundle/ (model.onnx + metadata.json) and
# ca-certificates/ (extra CA certificates for a TLS-intercepting proxy; may be empty).
# The certificates are used by pip in the build stage only; the final image never holds them.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY ca-certificates/ /tmp/extra-ca/
RUN set -eu; \
    bundle=/etc/ssl/certs/ca-certificates.crt; \
    if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then cat "$bundle" /tmp/extra-ca/*.crt > /tmp/ca-bundle.crt; \
    else cp "$bundle" /tmp/ca-bundle.crt; fi; \
    python3 -m venv /opt/serving
COPY serving-requirements.txt /tmp/requirements.txt
# Hash-checked wheels only; bytecode is compiled here so the container starts fast.
RUN /opt/serving/bin/pip install --no-cache-dir --disable-pip-version-check \
        --cert /tmp/ca-bundle.crt --index-url "$PIP_INDEX_URL" \
        --require-hashes --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/serving/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && find /opt/serving -depth \( -name tests -o -name '*.pyi' \) -prune -exec rm -rf {} + \
 && rm -f /opt/serving/bin/activate* /opt/serving/bin/Activate.ps1

FROM ${BASE_IMAGE}
ENV PATH=/opt/serving/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLOPS_SERVING_HOST=0.0.0.0 \
    MLOPS_SERVING_PORT=8080
COPY --from=build /opt/serving /opt/serving
COPY serving/ /app/serving/
COPY bundle/ /bundle/
WORKDIR /app
# Not root: a numeric user that owns nothing in the image (the bundle is read-only to it).
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/serving/bin/python", "-m", "serving.healthcheck"]
ENTRYPOINT ["/opt/serving/bin/python", "-m", "serving", "/bundle"]
