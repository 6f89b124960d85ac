"""What the money depends on, free of Flask and Celery: settings, the store and its Lua scripts,
the money rules' vocabulary, the PIX provider, PIX key rules, reconciliation and logging.

Arrows run one way: payouts_api | payouts_cli -> payouts_tasks -> payouts_core (checked by
import-linter in `make test`, see .importlinter).
"""
