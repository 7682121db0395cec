"""Typed loading of nested frozen dataclasses from plain data (YAML), with dotted overrides.

Generic machinery behind `pipeline.config.schema`: it knows ints, floats, bools, str, None, unions,
Literal choices, tuples (fixed or `...`), lists, dicts and nested dataclasses. Every error is a
ConfigError naming the dotted key, the expected type and the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the tree; the message says what to fix."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading `1e-4` as a float as YAML 1.2 does.

    YAML 1.1 (PyYAML's dialect) demands a dot in scientific notation, so `lr: 1e-4` would be
    the string "1e-4"; every other tool a user copies learning rates from writes it that way.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse config YAML (safe: plain data only), with YAML 1.2 floats such as `1e-4`."""
    return yaml.load(text, Loader=_ConfigLoader)


def apply_override(raw: dict[str, Any], override: str, root_type: type) -> None:
    """Set one `dotted.key=yaml value` into the raw nested dict, checking the key path against
    the dataclass tree rooted at `root_type`; the value is type-checked later by build_dataclass."""
    key, separator, text = override.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.split(".")
    section_type: Any = root_type
    target = raw
    for depth, part in enumerate(parts):
        is_last = depth == len(parts) - 1
        field_default: Any = None
        if _is_section_type(section_type):
            hints = get_type_hints(section_type)
            if part not in hints:
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(
                    f"unknown config key '{key}' in override {override!r}: '{part}' is not a key "
                    f"of {where}; valid keys there: {', '.join(hints)}"
                )
            field_default = _field_default(section_type, part)
            section_type = hints[part]
        elif get_origin(section_type) is dict:
            section_type = get_args(section_type)[1]
        else:
            raise ConfigError(
                f"unknown config key '{key}' in override {override!r}: "
                f"'{'.'.join(parts[:depth])}' is a value, not a section"
            )
        if is_last:
            target[part] = _parse_override_value(text, section_type)
            return
        child = target.get(part)
        if not isinstance(child, dict):
            # Setting one entry of a dict field keeps the default's other entries.
            seed = field_default if isinstance(field_default, dict) else {}
            child = dict(seed)
            target[part] = child
        target = child


def _field_default(section_type: type, name: str) -> Any:
    for section_field in fields(section_type):
        if section_field.name == name:
            if section_field.default is not MISSING:
                return section_field.default
            if section_field.default_factory is not MISSING:
                return section_field.default_factory()
    return None


def _parse_override_value(text: str, expected: Any) -> Any:
    """YAML-parse the text; keep the raw text when a string is expected and YAML made a scalar."""
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, bool | int | float) and _accepts_str(expected):
        accepts_scalar = not isinstance(_try_convert(value, expected), _Mismatch)
        if not accepts_scalar:
            return text
    return value


def build_dataclass(cls: type, raw: Any, *, prefix: str, source: str) -> Any:
    where = prefix or "the top level"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping of keys, got {raw!r}")
    hints = get_type_hints(cls)
    unknown = [key for key in raw if key not in hints]
    if unknown:
        dotted = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(
            f"{source}: unknown config key '{dotted}'; valid keys in {where}: {', '.join(hints)}"
        )
    values = {}
    for name, value in raw.items():
        dotted = f"{prefix}.{name}" if prefix else name
        values[name] = _convert(value, hints[name], dotted, source)
    return cls(**values)


class _Mismatch:
    """Returned (not raised) by _try_convert so union members can be tried in turn."""


def _try_convert(value: Any, expected: Any) -> Any:
    try:
        return _convert(value, expected, "", "")
    except ConfigError:
        return _Mismatch()


def _convert(value: Any, expected: Any, key: str, source: str) -> Any:
    """Check (and normalise: list -> tuple, int -> float) one value against its declared type."""
    origin = get_origin(expected)

    def mismatch() -> ConfigError:
        prefix = f"{source}: " if source else ""
        return ConfigError(
            f"{prefix}config key '{key}' expects {_type_name(expected)}, got {value!r} "
            f"({type(value).__name__})"
        )

    if _is_section_type(expected):
        if isinstance(value, expected):
            return value
        if not isinstance(value, Mapping):
            raise mismatch()
        return build_dataclass(expected, value, prefix=key, source=source)
    if origin in (Union, UnionType):
        if value is None and type(None) in get_args(expected):
            return None
        for member in get_args(expected):
            if member is type(None):
                continue
            converted = _try_convert(value, member)
            if not isinstance(converted, _Mismatch):
                return _convert(value, member, key, source)
        raise mismatch()
    if expected is type(None):
        if value is None:
            return None
        raise mismatch()
    if origin is Literal:
        if not isinstance(value, bool) and value in get_args(expected):
            return value
        raise mismatch()
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise mismatch()
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise mismatch()
    if expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise mismatch()
    if expected is str:
        if isinstance(value, str):
            return value
        raise mismatch()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise mismatch()
        members = get_args(expected)
        if len(members) == 2 and members[1] is Ellipsis:
            return tuple(
                _convert(item, members[0], f"{key}[{i}]", source) for i, item in enumerate(value)
            )
        if len(value) != len(members):
            raise mismatch()
        return tuple(
            _convert(item, member, f"{key}[{i}]", source)
            for i, (item, member) in enumerate(zip(value, members, strict=True))
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise mismatch()
        (member,) = get_args(expected)
        return [_convert(item, member, f"{key}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise mismatch()
        key_type, value_type = get_args(expected)
        return {
            _convert(k, key_type, f"{key} key", source): _convert(
                v, value_type, f"{key}.{k}", source
            )
            for k, v in value.items()
        }
    if expected is Any:
        return value
    raise ConfigError(f"config key '{key}' has a type this loader does not know: {expected!r}")


def _type_name(expected: Any) -> str:
    origin = get_origin(expected)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(member) for member in get_args(expected))
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(expected))
    if expected is type(None):
        return "null"
    if origin is not None:
        members = ", ".join("..." if m is Ellipsis else _type_name(m) for m in get_args(expected))
        return f"{origin.__name__}[{members}]"
    if _is_section_type(expected):
        return f"a mapping (section {expected.__name__})"
    return getattr(expected, "__name__", repr(expected))


def _accepts_str(expected: Any) -> bool:
    origin = get_origin(expected)
    if expected is str:
        return True
    if origin in (Union, UnionType):
        return any(_accepts_str(member) for member in get_args(expected))
    if origin is Literal:
        return any(isinstance(choice, str) for choice in get_args(expected))
    return False


def _is_section_type(candidate: Any) -> bool:
    return isinstance(candidate, type) and is_dataclass(candidate)


def is_section(value: Any) -> bool:
    return is_dataclass(value) and not isinstance(value, type)


def to_plain(value: Any) -> Any:
    if is_section(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value


def scalar_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(scalar_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {scalar_text(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    return str(value)
