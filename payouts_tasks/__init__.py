"""Celery side of the service: the app, the per-item settle and per-batch aggregate tasks."""

from payouts_tasks.celery_app import app

celery_app = app

__all__ = ["app", "celery_app"]
