"""The one harness for development processes: tests, the benchmark and `make run` share it.

It starts a private Redis (and, on request, a RabbitMQ vhost or node of its own as the broker),
and the API, workers and beat from the Procfile's own lines, returns once each answers (HTTP for
the API, a Celery ping for a worker), and stops whole process groups.
A development tool, never imported by the product.
"""

from payouts_devstack.process import Process, StackError, process_env
from payouts_devstack.procfile import procfile_command, read_procfile
from payouts_devstack.rabbitmq import RabbitMQUnavailable, RabbitNode, Vhost
from payouts_devstack.redis_server import RedisUnavailable, free_port, is_answering, start_redis
from payouts_devstack.stack import Stack

__all__ = ["Process", "RabbitMQUnavailable", "RabbitNode", "RedisUnavailable", "Stack", "StackError",
           "Vhost", "free_port", "is_answering", "procfile_command", "process_env", "read_procfile",
           "start_redis"]
