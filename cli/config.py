"""Where `run` takes its settings from: flags, then environment, then a TOML file.

Every flag of ``run`` has an environment variable ``AUTONOMI_ACTORS_<FLAG>`` (dashes
as underscores, e.g. ``AUTONOMI_ACTORS_MAX_STORAGE=50GiB``) and a key in the
``--config`` file (dashes or underscores, e.g. ``max-storage = "50GiB"``). A flag
on the command line wins over the environment, which wins over the file.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "AUTONOMI_ACTORS_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A config file or environment variable that cannot be used; names the culprit."""


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions
        if a.dest not in {"help", "config", "handler"} and a.option_strings
    }


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    """A value from the file or environment, turned into what the flag would give."""
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    if isinstance(action, argparse._AppendAction):
        items = (
            value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        )
        return [_convert_one(action, item, source) for item in items]
    return _convert_one(action, value, source)


def _convert_one(action: argparse.Action, value: Any, source: str) -> Any:
    convert: Any = action.type if callable(action.type) else str
    try:
        result = convert(str(value).strip())
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(
            f"{source}: {value!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return result


def load_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings of a TOML file, checked against the flags of ``parser``."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    actions = _settable(parser)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        values[dest] = _convert(actions[dest], value, f"config file {path}, {key}")
    return values


def from_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dest, action in _settable(parser).items():
        name = env_name(dest)
        if name in environ:
            values[dest] = _convert(action, environ[name], f"environment variable {name}")
    return values


def apply_defaults(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> None:
    """Make the file's and the environment's settings the defaults of ``parser``'s flags."""
    environ = os.environ if environ is None else environ
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config", type=Path)
    known, _ = probe.parse_known_args(list(argv))
    config_path = known.config or (
        Path(environ[env_name("config")]) if env_name("config") in environ else None
    )
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(load_file(config_path, parser))
    values.update(from_environment(parser, environ))
    if values:
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
