"""Typed TOML settings: one file per program, read into nested dataclasses.

Each section is a dataclass whose fields carry their defaults; the loader
refuses unknown keys, wrong types and missing required keys with a message
that names the key and the file. Relative paths are taken relative to the
config file's folder, so a config and its certificates can move together.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A settings file that cannot be used; the message names the file and the key."""


def load_config(cls: type[T], path: Path | None) -> T:
    """Read `path` into `cls`; with no path, the defaults (the local demo) are used."""
    if path is None:
        return _build(cls, {}, Path.cwd(), "<defaults>", "")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return _build(cls, data, path.resolve().parent, str(path), "")


def _build(cls: type[T], data: dict[str, Any], base: Path, source: str, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known here: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if name in data:
            values[name] = _convert(hint, data[name], base, source, key)
        elif dataclasses.is_dataclass(hint):
            values[name] = _build(hint, {}, base, source, key + ".")  # type: ignore[arg-type]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'")
        elif isinstance(f.default, Path):
            values[name] = _resolve(f.default, base)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{source}: {prefix}{exc}") from None
    return obj


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _convert(hint: Any, value: Any, base: Path, source: str, key: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, base, source, key)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a table")
        return _build(hint, value, base, source, key + ".")  # type: ignore[arg-type]
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: '{key}' must be a path (a non-empty string)")
        return _resolve(Path(value).expanduser(), base)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list")
        return tuple(_convert(item, v, base, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a table")
        _, vt = typing.get_args(hint)
        return {str(k): _convert(vt, v, base, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, not {type(value).__name__}")
        return value
    raise ConfigError(f"{source}: '{key}': unsupported setting type {hint!r}")


def port_ok(port: int) -> bool:
    return 0 < port < 65536


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def check_log_level(level: str) -> None:
    if level.upper() not in LOG_LEVELS:
        raise ValueError(f"log_level: {level!r} is not one of {', '.join(LOG_LEVELS)}")


def check_srtp_profiles(names: tuple[str, ...]) -> None:
    from .srtp import SrtpProfile, UnknownSrtpProfile

    if not names:
        raise ValueError("srtp_profiles: name at least one profile")
    for name in names:
        try:
            SrtpProfile.parse(name)
        except UnknownSrtpProfile as exc:
            raise ValueError(f"srtp_profiles: {exc}") from None
