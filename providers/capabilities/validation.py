"""Checking a capability's config against its JSON Schema, and filling in its defaults.

``jsonschema`` (draft 2020-12) does the checking; the most relevant error becomes one
InvalidData (422) whose message starts with the failing field's path, the way a client
finds it in what it sent: ``config.distance: -1 is less than the minimum of 0``,
``config.aggregates[1].function: 'median' is not one of [...]``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from providers.errors import InvalidData

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@lru_cache(maxsize=64)
def _validator(schema_json: bytes) -> Draft202012Validator:
    schema = orjson.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check(schema: dict[str, Any], config: Any) -> dict[str, Any]:
    """``config`` checked against ``schema``, with the schema's defaults filled in (a new dict)."""
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    error = best_match(validator.iter_errors(config))
    if error is not None:
        raise InvalidData(describe(error))
    filled = copy.deepcopy(config)
    _fill(schema, filled)
    return filled


def path(parts: Iterable[Any]) -> str:
    """``config.a[0].b`` for the path parts ``a, 0, b``."""
    text = "config"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def describe(error: ValidationError) -> str:
    """One line naming the failing field first."""
    where = path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            return f"{where}.{missing[0]}: a value is required"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in error.instance if k not in allowed)
        if extra:
            known = ", ".join(sorted(allowed)) or "none"
            return f"{where}.{extra[0][:60]}: not a setting of this capability (settings: {known})"
    return f"{where}: {error.message[:300]}"


def _fill(schema: dict[str, Any], value: Any) -> None:
    """Put each property's ``default`` where the value lacks it, recursively (objects, array items)."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _fill(schema["items"], item)
