"""TaskSpec under fuzzing, and the reliability fields: max_attempts and per-stage timeouts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_agent.errors import RunLost, SpecError
from celery_agent.spec import TaskSpec

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["repo", "entry", "args", "params", "env", "queue", "gpus", "timeout", "timeouts",
     "max_attempts", "executor", "docker", "conda", "diff", "workdir", "grace", "extra"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, st.dictionaries(_fields, _json, max_size=8)))
def test_any_json_either_parses_or_raises_a_spec_error(data):
    try:
        spec = TaskSpec.parse(data)
    except SpecError as err:
        assert str(err)
        return
    assert TaskSpec.parse(spec.to_json()) == spec, "a valid spec survives its own JSON"


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=100))
def test_max_attempts_round_trips(n):
    spec = TaskSpec.parse({"repo": "r", "entry": "t.py", "max_attempts": n})
    assert TaskSpec.parse(spec.to_json()).max_attempts == n


def test_max_attempts_defaults_to_one_retry_and_must_be_positive():
    assert TaskSpec.parse({"repo": "r", "entry": "t.py"}).max_attempts == 2
    with pytest.raises(SpecError, match="max_attempts"):
        TaskSpec.parse({"repo": "r", "entry": "t.py", "max_attempts": 0})


def test_stage_timeouts_name_known_stages_and_are_positive():
    spec = TaskSpec.parse({"repo": "r", "entry": "t.py", "timeouts": {"source": 5, "run": 60}})
    assert spec.timeouts == {"source": 5.0, "run": 60.0}
    with pytest.raises(SpecError, match="timeouts"):
        TaskSpec.parse({"repo": "r", "entry": "t.py", "timeouts": {"build": 5}})
    with pytest.raises(SpecError, match="> 0"):
        TaskSpec.parse({"repo": "r", "entry": "t.py", "timeouts": {"env": 0}})


def test_run_lost_names_the_run_stage():
    assert RunLost("gone").stage == "run"
