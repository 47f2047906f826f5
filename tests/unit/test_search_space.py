"""Search spaces: the text syntax, sampling within bounds, grids."""

from __future__ import annotations

import math
import random

import pytest

from celery_agent.errors import SpecError
from celery_agent.search.space import (
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    describe,
    parse_dimension,
    parse_space,
)


def test_each_kind_parses_to_its_dimension():
    assert parse_dimension("uniform:0:1") == Uniform(0.0, 1.0)
    assert parse_dimension("loguniform:1e-4:1e-1") == LogUniform(1e-4, 0.1)
    assert parse_dimension("int:2:8") == IntRange(2, 8)
    assert parse_dimension("choice:2,4,gini,true") == Choice((2, 4, "gini", True))


@pytest.mark.parametrize(
    "text",
    [
        "normal:0:1",
        "uniform:1",
        "uniform:2:1",
        "int:1.5:3",
        "loguniform:0:1",
        "choice:",
        "uniform:a:b",
    ],
)
def test_bad_dimensions_raise_a_spec_error(text):
    with pytest.raises(SpecError):
        parse_dimension(text)


def test_samples_stay_within_bounds_and_loguniform_spreads_over_decades():
    rng = random.Random(0)
    lu = LogUniform(1e-4, 1e-1)
    values = [lu.sample(rng) for _ in range(400)]
    assert all(1e-4 <= v <= 1e-1 for v in values)
    assert sum(v < 1e-3 for v in values) > 80, "a third of the draws fall in the lowest decade"
    assert all(2 <= IntRange(2, 5).sample(rng) <= 5 for _ in range(50))


def test_grids_cover_the_bounds():
    assert Uniform(0, 1).grid(3) == [0.0, 0.5, 1.0]
    assert [round(math.log10(v)) for v in LogUniform(1e-3, 1e-1).grid(3)] == [-3, -2, -1]
    assert IntRange(1, 3).grid(10) == [1, 2, 3]


def test_parse_space_takes_cli_items_or_a_mapping_and_describe_round_trips():
    space = parse_space(["lr=loguniform:0.0001:0.1", "depth=choice:2,4,8"])
    assert list(space) == ["lr", "depth"]
    assert parse_space(describe(space)) == space
    assert parse_space({"depth": IntRange(1, 3)}) == {"depth": IntRange(1, 3)}
    with pytest.raises(SpecError):
        parse_space(["lr"])
    with pytest.raises(SpecError):
        parse_space([])
