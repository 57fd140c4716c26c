"""What every capability is: a config schema, a plan, a PostGIS builder and a Python implementation.

Each capability is one :class:`Operation` subclass, so its two engines sit side by side
and can be read (and kept) equal: :meth:`Operation.plan` says what comes out (attributes,
geometry type, CRS) and checks the config against the data it gets; :meth:`Operation.sql`
writes its CTE; :meth:`Operation.vector` (or :meth:`Operation.map` for a row-wise one)
does the same with shapely and pyarrow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from psycopg import sql

from providers.capabilities import validation
from providers.capabilities.model import Layout
from providers.capabilities.sql import SqlStep
from providers.capabilities.vector import Frame, VectorStep


def schema(description: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A capability's config schema: an object of exactly ``properties``."""
    out: dict[str, Any] = {
        "$schema": validation.DIALECT,
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def other_property(what: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": 200, "description": what}


def column_property(what: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": 200, "description": what}


def columns_property(what: str, min_items: int = 0) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": 200},
        "minItems": min_items,
        "maxItems": 100,
        "uniqueItems": True,
        "description": what,
    }


class Operation(ABC):
    """One capability bound to one validated config, for one run.

    :meth:`plan` runs first and keeps what it resolved (the attributes a config names,
    a compiled expression) for :meth:`sql` and :meth:`vector`, so an instance serves
    one chain over one collection.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    schema: ClassVar[dict[str, Any]]
    #: Output feature i depends only on input feature i, and keeps its id. A step that reads
    #: another collection may be row-wise too: a change of the source is then refreshed
    #: feature by feature, a change of the other collection needs a whole run.
    rowwise: ClassVar[bool] = True
    #: Config keys naming another collection.
    inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        """What the schema cannot say (one setting or another); InvalidData naming the field."""
        return None

    @abstractmethod
    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        """The layout after this step, given its input and the layouts of the other collections.

        Checks every name the config gives against them (InvalidData naming the field).
        """

    @abstractmethod
    def sql(self, step: SqlStep) -> sql.Composable:
        """A SELECT of ``id``, the output attributes (in layout order) and ``geom`` from ``step.rel``."""

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        """The output frames for the input ``frames`` (a row-wise step maps them one by one)."""
        for frame in frames:
            yield self.map(frame, step)

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        raise NotImplementedError(f"{self.name} does not work on one batch at a time")
