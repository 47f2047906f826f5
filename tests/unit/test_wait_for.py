"""The one wait of the tests and benchmarks: a probe asked until it answers, a failure that says
what was waited for."""

from __future__ import annotations

import time

import pytest

from celery_agent.testing import wait_for


def test_the_first_truthy_answer_is_returned() -> None:
    answers = iter([None, [], 0, {"state": "done"}])
    assert wait_for("the fourth answer", lambda: next(answers), 5, every=0.001) == {"state": "done"}


def test_the_deadline_names_what_was_waited_for_the_last_answer_and_the_detail() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        wait_for("the queue to empty", lambda: [], 0.2, every=0.01, detail=lambda: "log tail")
    assert 0.2 <= time.monotonic() - started < 2
    assert str(caught.value) == "waited 0.2 s for the queue to empty; last answer: []\nlog tail"


def test_an_error_named_in_retry_on_counts_as_not_yet_and_is_told_at_the_deadline() -> None:
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("refused")
        return "up"

    assert wait_for("the service", flaky, 5, every=0.001, retry_on=(OSError,)) == "up"
    assert len(tries) == 3
    tries.clear()  # from now on it never comes up
    with pytest.raises(AssertionError, match=r"last answer: ConnectionError\('refused'\)"):
        wait_for("the service", lambda: tries.clear() or flaky(), 0.05, retry_on=(OSError,))


def test_any_other_error_and_a_failed_check_inside_the_probe_end_the_wait_at_once() -> None:
    def held() -> bool:
        raise AssertionError("the worker died")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="the worker died"):
        wait_for("the worker", held, 30)
    with pytest.raises(KeyError):
        wait_for("the key", lambda: {}["missing"], 30, retry_on=(OSError,))
    assert time.monotonic() - started < 5
