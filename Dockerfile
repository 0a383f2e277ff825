# The proxy's image. Dependencies come from pyproject.toml alone: the builder runs the same
# `pip install .` as scripts/setup.sh, into a virtualenv that the final stage copies.
#
#   docker build -t ollama-metrics-proxy .
#   docker run -p 11434:11434 -e OLLAMA_UPSTREAM=http://OLLAMA-HOST:11434 ollama-metrics-proxy
#
# deploy/docker-compose.yml runs it next to Ollama, Prometheus, Loki and Grafana.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# What the package is built from (.dockerignore admits nothing else).
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
# The same base image, so the venv's interpreter link (/usr/local/bin/python3.11) holds.
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data ollama-metrics \
    && mkdir /data \
    && chown ollama-metrics:ollama-metrics /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ANALYTICS_DIR=/data
# /data holds the SQLite store; a new named volume mounted there inherits its owner.
WORKDIR /data
USER ollama-metrics
EXPOSE 11434
# /test answers 200 whether or not Ollama does; there is no curl in the slim image.
HEALTHCHECK --interval=30s --timeout=20s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/test' % os.environ.get('PROXY_PORT', '11434'), timeout=15)"]
ENTRYPOINT ["ollama-metrics"]
CMD ["proxy", "--host", "0.0.0.0"]
