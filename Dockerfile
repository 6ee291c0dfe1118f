# syntax=docker/dockerfile:1
# voicebot media server. Build: docker build -t voicebot .   Run: docker run -p 8080:8080 voicebot

# --- build stage: install into a venv once, compiling the C kernels (resampler, base64), so the runtime
# image needs no compiler ----------------------------------------------------------------------------------
FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY voicebot ./voicebot
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import voicebot._dsp"

# --- runtime stage ----------------------------------------------------------------------------------------
FROM python:3.13-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VOICEBOT_HOST=0.0.0.0 \
    VOICEBOT_PORT=8080 \
    VOICEBOT_LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin voicebot
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Example bots; mount or COPY your own module and point --handler (or VOICEBOT_HANDLER) at it.
COPY --chown=voicebot:voicebot handlers ./handlers
USER voicebot
EXPOSE 8080
# Probes the media port's /healthz (503 while draining after SIGTERM).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VOICEBOT_PORT', '8080'), timeout=2)"]
# Exec form: Python is PID 1's only process, so SIGTERM reaches it and the drain runs. Give the
# container's stop grace period (docker --stop-timeout, Kubernetes terminationGracePeriodSeconds)
# more than --drain-timeout.
ENTRYPOINT ["python", "-m", "voicebot"]
CMD ["serve", "--handler", "handlers.echo:EchoBot"]
