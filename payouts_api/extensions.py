"""Flask extensions, created here and bound to the app in the factory."""

from flask import g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from payouts_api.auth import ANONYMOUS


def client_identity() -> str:
    """Rate limits apply per API key name when the caller has one, else per address."""
    name = g.get("client_name")
    return f"key:{name}" if name and name != ANONYMOUS else f"ip:{get_remote_address()}"


limiter = Limiter(key_func=client_identity)
