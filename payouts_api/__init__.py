"""Flask API: `create_app()` builds the app (gunicorn 'payouts_api:create_app()')."""

from __future__ import annotations

from flask import Flask

from payouts_api.auth import require_api_key
from payouts_api.extensions import init_limiter, trust_proxies
from payouts_api.health import bp as health_bp
from payouts_api.items import bp as items_bp
from payouts_api.ledger import init_ledger
from payouts_api.metrics import bp as metrics_bp
from payouts_api.openapi import init_docs
from payouts_api.payouts import bp as payouts_bp
from payouts_api.problems import register_error_handlers
from payouts_api.reports import bp as reports_bp
from payouts_api.request_context import init_request_context
from payouts_api.tracing import init_tracing
from payouts_api.webhooks import bp as webhooks_bp
from payouts_core.ledger.schema import check_schema_at_start
from payouts_core.logs import configure_logging
from payouts_core.settings import Settings, SettingsError, get_settings
from payouts_core.store import PayoutStore


def create_app(test_config: dict | None = None, settings: Settings | None = None) -> Flask:
    """The app for `settings` (default: read once from the environment).

    `test_config` holds Flask's own keys (`TESTING`); our settings stay in one object, so a
    test changes them with `dataclasses.replace(get_settings(), ...)`, never under new names.
    """
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.from_mapping(
        SETTINGS=settings,
        # The names Flask and flask-limiter read, derived from the settings.
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        # extensions.init_limiter writes the limit headers itself (see there why).
        RATELIMIT_HEADERS_ENABLED=False,
        # A limiter storage outage must not take the API down with it: fail open, and let the
        # handlers answer 503 if Redis is really gone.
        RATELIMIT_SWALLOW_ERRORS=True,
    )
    if test_config:
        app.config.update(test_config)
    if not settings.api_keys and not settings.auth_disabled:
        raise SettingsError("PAYOUTS_API_KEYS is empty: set name:key pairs, or "
                            "PAYOUTS_AUTH_DISABLED=true for local use only")
    if not app.testing:
        configure_logging(settings.log_level, settings.log_format)
    if not check_schema_at_start(settings.ledger.database_url):  # SchemaOutdated: refuse to start
        app.logger.warning("the ledger (DATABASE_URL) cannot be reached: starting anyway, its "
                           "schema is checked by the archiver")
    init_tracing(app)  # only when OTEL_TRACES_EXPORTER names an exporter

    app.extensions["payouts_store"] = PayoutStore.from_url(
        settings.store_url, socket_timeout=5, socket_connect_timeout=2)
    trust_proxies(app)
    init_limiter(app)
    register_error_handlers(app)
    init_ledger(app)
    init_request_context(app)
    app.before_request(require_api_key)
    app.register_blueprint(payouts_bp)
    app.register_blueprint(items_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(webhooks_bp)
    init_docs(app)
    return app
