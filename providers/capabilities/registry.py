"""The capabilities there are, what each takes, and the checking of a rule's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.capabilities import validation
from providers.capabilities.attributes import Area, Compute, Filter, Length, Rename, Select
from providers.capabilities.groups import Dedupe, Dissolve, HexagonGrid, SquareGrid, Voronoi
from providers.capabilities.operation import Operation
from providers.capabilities.overlays import (
    Clip,
    Difference,
    Intersection,
    Nearest,
    PointInPolygon,
    SpatialJoin,
)
from providers.capabilities.shapes import (
    Buffer,
    Centroid,
    ConvexHull,
    Envelope,
    Explode,
    MakeValid,
    PointOnSurface,
    Reproject,
    Simplify,
    SnapToGrid,
)
from providers.errors import NotFound

#: Every capability, in the order GET /capabilities lists them.
OPERATIONS: tuple[type[Operation], ...] = (
    Buffer,
    Reproject,
    Simplify,
    Centroid,
    PointOnSurface,
    ConvexHull,
    Envelope,
    MakeValid,
    SnapToGrid,
    Explode,
    Dissolve,
    Clip,
    Intersection,
    Difference,
    SpatialJoin,
    PointInPolygon,
    Nearest,
    Filter,
    Select,
    Rename,
    Compute,
    Area,
    Length,
    SquareGrid,
    HexagonGrid,
    Voronoi,
    Dedupe,
)
_BY_NAME: dict[str, type[Operation]] = {op.name: op for op in OPERATIONS}


@dataclass(frozen=True)
class Capability:
    """What a client learns about a capability (``GET /capabilities``)."""

    name: str
    description: str
    schema: dict[str, Any]  # JSON Schema (draft 2020-12) of its config, with defaults
    rowwise: bool  # output feature i depends only on input feature i, whose id it keeps
    inputs: tuple[str, ...]  # config keys naming another collection


CAPABILITIES: dict[str, Capability] = {
    op.name: Capability(op.name, op.description, op.schema, op.rowwise, op.inputs) for op in OPERATIONS
}


@dataclass(frozen=True)
class Step:
    """One step of a chain: a capability and its validated config (a rule)."""

    capability: str
    config: dict[str, Any]


def operation(name: str) -> type[Operation]:
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise NotFound(f"no capability {str(name)[:100]!r} (capabilities: {', '.join(_BY_NAME)})")
    return found


def get(name: str) -> Capability:
    """The capability ``name``; NotFound (404) for an unknown one."""
    return CAPABILITIES[operation(name).name]


def validate(name: str, config: Any) -> dict[str, Any]:
    """``config`` checked for capability ``name``, its defaults filled in.

    InvalidData (422) whose message names the failing field (``config.distance: -1 is less
    than the minimum of 0``); NotFound for an unknown capability. Names of attributes and
    collections are checked when the rule runs, against the data it runs on.
    """
    found = operation(name)
    filled = validation.check(found.schema, {} if config is None else config)
    found.check(filled)
    return filled
