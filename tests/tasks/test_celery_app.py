"""The Celery app's logging setup: JSON lines, no per-task chatter unless debugging."""

from __future__ import annotations

import logging

from payouts_tasks import celery_app


def test_celerys_per_task_lines_are_off_unless_debugging(monkeypatch):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        celery_app._json_logs()
        assert all(logging.getLogger(n).level == logging.WARNING for n in celery_app.PER_TASK_LOGGERS)
        assert logging.getLogger("payouts_tasks.settle").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in celery_app.PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
