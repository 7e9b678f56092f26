# rnnlm with its demo model built in: `docker build -t rnnlm .` then
# `docker run -p 8000:8000 rnnlm`, or `docker compose up` (see docker-compose.yml).
#
# Build arguments, for hosts that cannot reach Docker Hub or PyTorch's index:
#   BASE_IMAGE       any Debian-like image with Python 3.11 (default python:3.11-slim);
#                    docker/base-image.sh makes one from Debian's packages
#   TORCH_INDEX_URL  where torch's CPU build comes from (default PyTorch's CPU index)
#   docker/wheels/   wheels put there by docker/wheelhouse.sh are installed instead,
#                    with no network at all
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a virtual environment with torch (CPU) and rnnlm
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# A virtual environment: Debian's own Python (the debootstrap base) refuses
# system-wide installs, and the final stage copies it whole.
RUN python3 -m venv /opt/venv
COPY docker/wheels/ /tmp/wheels/
# CPU-only torch first: the project's pin is then met and no CUDA libraries are
# pulled in. This layer stays cached while the code changes.
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /tmp/wheels torch==2.13.0; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi
COPY pyproject.toml README.md /tmp/src/
COPY rnnlm /tmp/src/rnnlm
COPY models /tmp/src/models
COPY training /tmp/src/training
COPY app /tmp/src/app
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /tmp/wheels /tmp/src; \
    else \
        pip install /tmp/src; \
    fi

# ---- the image: the environment, an unprivileged user, the demo model
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
COPY docker/train.sh /usr/local/bin/rnnlm-train-texts

# From here on, an unprivileged user that owns only /models.
RUN useradd --create-home --uid 10001 rnnlm && mkdir /models && chown rnnlm:rnnlm /models
USER rnnlm
WORKDIR /home/rnnlm

# The demo model (a character LSTM on the standard library's docstrings, 1,000
# steps from a fixed seed: the same model on any build machine), built now so
# that a container serves at once. The build fails if it is worse than it must be.
RUN rnnlm demo --out /models --steps 1000 --max-valid-ppl 6.5

ENV RNNLM_MODELS_DIR=/models
EXPOSE 8000
# Healthy: serving, its models loaded (/ready). No curl in the image: Python asks
# (urlopen raises on a refusal or an error status).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["rnnlm", "serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
