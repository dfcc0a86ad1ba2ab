# syntax=docker/dockerfile:1
# One image for both roles (docs/deployment.md):
#   web     docker run IMAGE            (migrate, then daphne on :8000)
#   worker  docker run -e TTS_ROLE=worker IMAGE   (python manage.py runworker tts-generate)
#
# torch comes from PyPI, whose Linux wheels carry CUDA and also run on CPU: the same image
# serves CPU and GPU workers. For a CPU-only image several GB smaller, build with
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DJANGO_SETTINGS_MODULE=config.settings \
    STATIC_ROOT=/app/staticfiles \
    DATABASE_URL=sqlite:////data/db.sqlite3 \
    MEDIA_ROOT=/data/media \
    TTS_COQUI_CACHE_DIR=/data/coqui \
    HF_HOME=/data/coqui/huggingface \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib \
    PORT=8000

# espeak-ng: the offline voice. tini: PID 1 that forwards signals and reaps children, so
# `docker stop` stops daphne and the worker at once instead of after 10 s.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first: this layer (torch included) is rebuilt only when they change.
ARG PIP_EXTRA_INDEX_URL=
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# Static files at build time, served by WhiteNoise (hashed names, compressed). This also
# byte-compiles the app's modules while the code is still writable.
RUN python manage.py collectstatic --noinput --verbosity 0

# The code stays root-owned and read-only to the app; it writes only under /data
# (media, the Coqui model cache, SQLite when no DATABASE_URL is given).
RUN useradd --create-home --uid 10001 --user-group narrator \
    && mkdir -p /data/media /data/coqui \
    && chown -R narrator:narrator /data
USER narrator

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=6s --start-period=90s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]
ENTRYPOINT ["tini", "--", "sh", "/app/docker/entrypoint.sh"]
CMD ["web"]
