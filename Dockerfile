# rnnlm with its demo model built in: `docker build -t rnnlm .` then
# `docker run -p 8000:8000 rnnlm`, or `docker compose up` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, from PyTorch's CPU index: the project's pin is then met and
# no CUDA libraries are pulled in. This layer stays cached while the code changes.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md /tmp/src/
COPY rnnlm /tmp/src/rnnlm
COPY models /tmp/src/models
COPY training /tmp/src/training
COPY app /tmp/src/app
RUN pip install /tmp/src && rm -rf /tmp/src
COPY docker/train.sh /usr/local/bin/rnnlm-train-texts

# From here on, an unprivileged user that owns only /models.
RUN useradd --create-home --uid 10001 rnnlm && mkdir /models && chown rnnlm:rnnlm /models
USER rnnlm
WORKDIR /home/rnnlm

# The demo model (a character LSTM on the standard library's docstrings, 150 s of
# training), built now so that a container serves at once.
RUN rnnlm demo --out /models

ENV RNNLM_MODELS_DIR=/models
EXPOSE 8000
# No curl in the slim image: Python asks /health (urlopen raises on a refusal or an error status).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["rnnlm", "serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
