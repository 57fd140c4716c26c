"""Capabilities: spatial processing run where the data lives, written as a new collection.

A *capability* (``buffer``, ``dissolve``, ``spatial_join`` ...) is one processing step with
a JSON Schema for its config; a *rule* is a capability with a validated config
(:class:`Step`); a chain of rules applied to a collection makes a new table, published
like a loaded one. Each capability is written twice, with the same results: in SQL for
PostGIS (the whole chain one statement, run inside the database) and in Python with
shapely 2 and pyarrow for GeoPackage and mixed stores.

Interface: :data:`CAPABILITIES`, :func:`get`, :func:`validate`, :class:`Step`, :func:`run`,
:func:`refresh`.
"""

from providers.capabilities.chain import refresh, run
from providers.capabilities.registry import CAPABILITIES, Capability, Step, get, validate

__all__ = ["CAPABILITIES", "Capability", "Step", "get", "refresh", "run", "validate"]
