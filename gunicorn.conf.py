"""Gunicorn settings for the API (read from the working directory by default).

Prometheus multiprocess mode: every gunicorn worker writes its metrics to files in one
directory and /metrics sums them, so a scrape sees the whole API, not one random worker.
The directory must be chosen before any worker imports prometheus_client, hence here.
"""

import os
import shutil
import tempfile

_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="payouts-api-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
shutil.rmtree(_metrics_dir, ignore_errors=True)
os.makedirs(_metrics_dir, exist_ok=True)

# SIGTERM: stop accepting, let in-flight requests finish for up to this long.
graceful_timeout = 30
# Our own JSON request log replaces gunicorn's access log.
accesslog = None


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
