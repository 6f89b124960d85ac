"""The Celery application: `celery -A payouts_tasks worker` finds it as `payouts_tasks.app`."""

from celery import Celery

app = Celery(
    "payouts_tasks",
    include=["payouts_tasks.settle", "payouts_tasks.aggregate", "payouts_tasks.sweeper"],
)
app.config_from_object("celeryconfig")
