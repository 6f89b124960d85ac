"""The Lua scripts (payouts_core/lua/): one per transition of payouts_core/model.py.

Each script runs after one generated prelude: the constants the Python rules define, as Lua
locals (`lua_constants`), then lib.lua (shared steps: finish, reused, the outbox, archived
claims). A script takes one JSON object of named arguments (ARGV[1]) and reads hashes by field
name, so a script reads like the model method it keeps atomic.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

import orjson
import redis
from redis.commands.core import Script


def _lua_value(value) -> str:
    """A Python constant as a Lua literal (strings, numbers, dicts and sets of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII only: a valid Lua string literal
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_value(str(k))}] = {_lua_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, frozenset | set):
        return _lua_value({str(k): True for k in sorted(value)})
    raise TypeError(f"no Lua literal for {value!r}")


def lua_constants(constants: dict) -> str:
    """`local NAME = value` for each constant: the one place Lua learns the Python rules."""
    return "".join(f"local {name} = {_lua_value(value)}\n" for name, value in constants.items())


@cache
def _read(name: str) -> str:
    return files("payouts_core").joinpath("lua", name).read_text()


def script_text(name: str, constants: dict | None = None) -> str:
    """A script as Redis runs it: the constants and lib.lua (when given constants), then itself."""
    if constants is None:
        return _read(name)
    return lua_constants(constants) + _read("lib.lua") + _read(name)


class Transition:
    """One script (`name`.lua) called with named arguments: `transition(keys, index=3, batch_id="b")`."""

    def __init__(self, client: redis.Redis, name: str, constants: dict):
        self.name = name
        self._script: Script = client.register_script(script_text(f"{name}.lua", constants))

    def __call__(self, keys: list[str], client=None, **args):
        # A None argument is left out: the script sees nil, as for a missing field.
        named = orjson.dumps({k: v for k, v in args.items() if v is not None})
        return self._script(keys=keys, args=[named], client=client)
