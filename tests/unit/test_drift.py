from __future__ import annotations

from decimal import Decimal

import pytest

from halffull.builders.drift import covers, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("500m", Decimal("0.5")), ("2Gi", 2 * 2**30), ("1e3", 1000), ("64Gi", 64 * 2**30)],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_not_a_quantity() -> None:
    assert parse_quantity("lots") is None and parse_quantity("1Xi") is None


def test_live_superset_covers_desired() -> None:
    desired = {"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}
    live = {"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"a": "b"},
                     "clusterIP": "10.0.0.1"}, "status": {}}  # fmt: skip
    assert covers(live, desired)


@pytest.mark.parametrize(
    "live",
    [
        {"spec": {"ports": [{"port": 81}], "selector": {"a": "b"}}},  # changed value
        {"spec": {"ports": [], "selector": {"a": "b"}}},  # list shortened
        {"spec": {"ports": [{"port": 80}, {"port": 90}], "selector": {"a": "b"}}},  # lengthened
        {"spec": {"ports": [{"port": 80}]}},  # key removed
        {"spec": "x"},  # type changed
    ],
)
def test_any_edit_of_a_managed_field_is_drift(live: dict[str, object]) -> None:
    assert not covers(live, {"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}})


def test_quantities_compare_by_value_only_under_resources() -> None:
    assert covers({"limits": {"cpu": "1"}}, {"limits": {"cpu": "1000m"}})
    assert not covers({"limits": {"cpu": "2"}}, {"limits": {"cpu": "1000m"}})
    assert not covers({"args": ["1"]}, {"args": ["1000m"]})
