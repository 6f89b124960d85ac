"""The Celery application: `celery -A payouts_tasks worker` finds it as `payouts_tasks.app`."""

from celery import Celery
from celery.signals import setup_logging

from payouts_tasks.logs import configure_logging
from payouts_tasks.settings import get_settings

app = Celery(
    "payouts_tasks",
    include=["payouts_tasks.settle", "payouts_tasks.aggregate", "payouts_tasks.sweeper",
             "payouts_tasks.metrics"],
)
app.config_from_object("celeryconfig")


@setup_logging.connect
def _json_logs(**_kwargs) -> None:
    """Workers and beat log JSON lines like the API (connecting here replaces Celery's setup)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
