# One image for the API, the Celery workers and Flower (docker-compose.yml picks the command).
# Workers: `payouts-worker --pool gevent` (setup.cfg's console script), one gevent Celery
# worker process per core of the container (WORKER_PROCESSES).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs: never the local .venv, var/ (Redis data) or .git.
COPY setup.cfg pyproject.toml README.md celeryconfig.py ./
COPY payouts_api ./payouts_api
COPY payouts_tasks ./payouts_tasks
COPY payouts_core ./payouts_core
COPY payouts_cli ./payouts_cli
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin payouts

# Run from a directory without sources, so the installed package is what gets imported.
WORKDIR /app
# gunicorn reads ./gunicorn.conf.py (metrics directory, graceful timeout, no access log).
COPY seeds ./seeds
COPY gunicorn.conf.py ./
USER payouts

EXPOSE 8000 5555
CMD ["gunicorn", "payouts_api:create_app()", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "8"]
