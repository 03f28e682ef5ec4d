"""
A small JSON Schema subset for service configuration.

Supported keywords: ``type`` (``object``, ``array``, ``string``, ``integer``, ``number``,
``boolean``, ``null``, or a list of them), ``properties``, ``required``,
``additionalProperties`` (a boolean), ``items``, ``enum``, ``minimum``, ``maximum``,
``minLength``, ``maxLength``, ``maxItems``, ``pattern`` and ``default`` (not applied, only
documented).  Validation collects every error, each with a JSON-pointer-like path, so that an
operator sees everything wrong at once.  Pure and free of Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaError", "validate"]

Schema = Mapping[str, Any]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class SchemaError(ValueError):
    """A schema uses something this validator does not know."""


def _type_matches(value: object, name: str) -> bool:
    if name not in _TYPES:
        raise SchemaError(f"unknown type {name!r}")
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: object, schema: Schema, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema``, as ``"path: reason"`` lines (empty: valid)."""
    errors: list[str] = []
    where = path or "/"
    wanted = schema.get("type")
    if wanted is not None:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(_type_matches(value, name) for name in names):
            errors.append(f"{where}: expected {' or '.join(names)}, got {_describe(value)}")
            return errors
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(choice) for choice in schema["enum"])
        errors.append(f"{where}: must be one of {choices}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: must be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: must be at most {schema['maximum']}, got {value}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: must be at most {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{where}: must match {schema['pattern']!r}, got {value!r}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: at most {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for index, item in enumerate(value):
                errors.extend(validate(item, items, f"{path}/{index}"))
    if isinstance(value, dict):
        properties: Mapping[str, Schema] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{path}/{name}: required")
        for name, item in value.items():
            if name in properties:
                errors.extend(validate(item, properties[name], f"{path}/{name}"))
            elif schema.get("additionalProperties", True) is False:
                known = ", ".join(sorted(properties)) or "none"
                errors.append(f"{path}/{name}: unknown setting (known: {known})")
    return errors


def _describe(value: object) -> str:
    for name, types in _TYPES.items():
        if _type_matches(value, name) and isinstance(value, types):
            return name
    return type(value).__name__
