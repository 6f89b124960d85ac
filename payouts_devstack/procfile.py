"""The Procfile's lines as argv lists, so every harness runs exactly what production runs."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from honcho.environ import parse_procfile

from payouts_devstack.process import ROOT, StackError

PROCFILE = ROOT / "Procfile"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")
_SHELL_WORDS = {"&&", "||", ";", "|", "&", ":", "exec"}


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """Process name -> command line, parsed as honcho (`make run`) parses it."""
    return dict(parse_procfile(path.read_text()).processes)


def _expand(word: str, env: Mapping[str, str]) -> str:
    """${NAME:-default}, ${NAME} and $NAME as sh expands them (unset or empty takes the default)."""
    return _VAR.sub(lambda m: env.get(m[1] or m[3]) or (m[2] or ""), word)


def set_option(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with `option` set to `value`: replaced where the line has it (`--opt v` or
    `--opt=v`), appended otherwise. Replaced, not repeated: gunicorn would bind both `--bind`s."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == option:
            argv[i + 1] = value
            return argv
        if arg.startswith(option + "="):
            argv[i] = f"{option}={value}"
            return argv
    return [*argv, option, value]


def procfile_command(name: str, env: Mapping[str, str], options: Mapping[str, str] | None = None,
                     extra: Iterable[str] = (), path: Path = PROCFILE) -> list[str]:
    """The Procfile's `name` line as argv: variables expanded from `env`, each of `options` set,
    `extra` appended, the executable found on env's PATH."""
    try:
        words = shlex.split(read_procfile(path)[name])
    except KeyError:
        raise StackError(f"no '{name}' process in {path}") from None
    if _SHELL_WORDS & set(words):
        raise StackError(f"the Procfile's '{name}' line is shell, not one command: run it with honcho")
    argv = [_expand(word, env) for word in words]
    for option, value in (options or {}).items():
        argv = set_option(argv, option, value)
    argv += extra
    argv[0] = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    return argv
