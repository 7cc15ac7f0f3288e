# A Python 3.11 base made without a registry: Debian bookworm (imported from debootstrap)
# plus python3, venv and CA certificates. Where a registry exists, use python:3.11-slim.
ARG ROOT_IMAGE=local/bookworm-base
FROM ${ROOT_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
CMD ["python3"]
