"""Does a live object still carry everything we asked for?

The API server adds defaults (protocols, probe schemes, clusterIPs, ...) and rewrites resource
quantities in canonical form, so a live object is compared as a superset of the desired one:
every field we set must be there with an equal value; fields we did not set are the server's.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY_KEYS = frozenset({"limits", "requests", "sizeLimit"})
_SUFFIX: dict[str, Decimal | int] = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes resource quantity as a number, or None if it is not one."""
    m = _QUANTITY.match(str(value))
    if not m or m.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])
    except InvalidOperation:
        return None


def _equal_quantity(want: object, have: object) -> bool:
    a, b = parse_quantity(want), parse_quantity(have)
    return a is not None and a == b


def covers(live: Any, desired: Any, *, quantities: bool = False) -> bool:
    """True when `live` contains `desired`: maps as supersets, lists item by item."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, want in desired.items():
            if key not in live:
                return False
            if not covers(live[key], want, quantities=quantities or key in _QUANTITY_KEYS):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(covers(h, w, quantities=quantities) for h, w in zip(live, desired, strict=True))
    if desired == live:
        return True
    return quantities and _equal_quantity(desired, live)
