"""Celery side of the service: the app, its tasks (settle, aggregate, sweep) and the chord.

The money rules, the store and the provider live in `payouts_core`; this package only runs them.
"""

from payouts_tasks.celery_app import app

__all__ = ["app"]
