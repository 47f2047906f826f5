from __future__ import annotations

import pickle

import pytest
from celery.backends.base import DisabledBackend

from celery_agent import app
from celery_agent.errors import ALL_ERRORS


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_error_survives_celery_result_backend_round_trip(cls):
    backend = DisabledBackend(app=app)
    backend.serializer = "json"
    err = cls("something broke", "do this instead")
    stored = backend.prepare_exception(err, serializer="json")
    back = backend.exception_to_python(stored)
    assert type(back).__name__ == cls.__name__
    assert back.args == err.args and str(back) == "something broke (do this instead)"


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_error_survives_pickle(cls):
    err = cls("msg")
    assert pickle.loads(pickle.dumps(err)) == err
