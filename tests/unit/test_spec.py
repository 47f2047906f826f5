from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_agent.errors import SpecError
from celery_agent.params import parse_param
from celery_agent.spec import TaskSpec


def make(**kw):
    return TaskSpec.parse({"repo": "/tmp/r", "entry": "train.py"} | kw)


def test_minimal_spec_has_documented_defaults():
    spec = make()
    assert spec.executor == "venv" and spec.queue == "default" and spec.params == {}
    assert spec.requirements is None and spec.name is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"repo": ""}, "repo is empty"),
        ({"entry": "../x.py"}, "outside the repository"),
        ({"entry": "/etc/passwd"}, "outside the repository"),
        ({"entry": "-m not valid"}, "dotted module name"),
        ({"executor": "kube"}, "executor 'kube' is unknown"),
        ({"params": {"bad name": 1}}, "parameter name 'bad name'"),
        ({"requirements": ["numpy>>1"]}, "requirement 'numpy>>1' is not valid"),
        ({"gpus": "zero"}, "gpus 'zero'"),
        ({"timeout": -1}, "give seconds > 0"),
        ({"timeout": 0}, "timeout: 0.0 is not a timeout"),
        ({"timeouts": {"source": 0}}, "not so for source"),
        ({"grace": -1}, "give seconds >= 0"),
        ({"epochs": 3}, "unknown field"),
        ({"env": {"1BAD": "x"}}, "environment variable name"),
        ({"checkpoint_dir": "../up"}, "checkpoint_dir '../up' is not a folder under the output"),
        ({"checkpoint_dir": "/abs"}, "give a relative path such as 'checkpoints'"),
        ({"checkpoint_sync": -1}, "checkpoint_sync -1.0 is not valid: give seconds >= 0"),
        ({"resume_from": "a b"}, "resume_from 'a b' is not a run id"),
    ],
)
def test_invalid_spec_names_the_field_and_the_fix(fields, words):
    with pytest.raises(SpecError) as info:
        make(**fields)
    assert words in str(info.value)
    assert str(info.value).startswith("invalid task spec: ")
    assert str(info.value).count("invalid task spec") == 1 and info.value.field != "spec"
    with pytest.raises(SpecError) as direct:
        TaskSpec(**({"repo": "/tmp/r", "entry": "train.py"} | fields))
    assert direct.value.args == info.value.args


def test_spec_built_directly_raises_spec_error_naming_the_field():
    with pytest.raises(SpecError) as info:
        TaskSpec(repo="r", entry="train.py", timeout=0)
    err = info.value
    assert isinstance(err, ValueError) and err.field == "timeout"
    assert "timeout: 0.0 is not a timeout" in err.message and "TaskSpec fields" in (err.hint or "")


def test_spec_error_keeps_its_field_through_celery_and_pickle():
    import pickle

    from celery.backends.base import DisabledBackend

    from celery_agent import app

    try:
        TaskSpec(repo="r", entry="../x.py", executor="kube")
    except SpecError as err:
        sent = err
    backend = DisabledBackend(app=app)
    back = backend.exception_to_python(backend.prepare_exception(sent, serializer="json"))
    assert back.field == "entry,executor" and back.args == sent.args
    assert pickle.loads(pickle.dumps(sent)).field == "entry,executor"


def test_missing_repo_is_named():
    with pytest.raises(SpecError, match="repo: Field required"):
        TaskSpec.parse({"entry": "x.py"})


def test_module_entry_is_normalized():
    spec = make(entry="-m  pkg.train")
    assert spec.entry == "-m pkg.train" and spec.module == "pkg.train"


def test_spec_round_trips_through_json():
    spec = make(params={"lr": 0.5, "name": "x", "flag": True}, requirements=["pyyaml"], diff="d")
    again = TaskSpec.parse(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    assert again.diff == "d\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("lr=0.5", ("lr", 0.5)), ("epochs=3", ("epochs", 3)), ("name=abc", ("name", "abc")),
     ("flag=true", ("flag", True)), ("opt=[1,2]", ("opt", "[1,2]")), ("empty=", ("empty", ""))],
)  # fmt: skip
def test_parse_param_reads_json_scalars(text, expected):
    assert parse_param(text) == expected


def test_parse_param_without_equals_says_how():
    with pytest.raises(SpecError, match="name=value"):
        parse_param("lr")


@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=5), st.integers()), max_size=6)
)
def test_any_dict_either_validates_or_raises_spec_error(data):
    try:
        TaskSpec.parse(data)
    except SpecError as err:
        assert str(err).startswith("invalid task spec")


def test_docker_and_conda_executors_need_their_options():
    with pytest.raises(SpecError, match="docker=\\{'image'"):
        make(executor="docker")
    with pytest.raises(SpecError, match="conda=\\{'file'"):
        make(executor="conda")
    assert make(executor="docker", docker={"image": "img"}).docker.pull == "if-missing"


def test_conda_options_need_exactly_one_source():
    with pytest.raises(SpecError, match="exactly one of"):
        make(executor="conda", conda={"file": "environment.yml", "specs": ["numpy"]})
    with pytest.raises(SpecError, match="outside the repository"):
        make(executor="conda", conda={"file": "../environment.yml"})


def test_bad_docker_volume_is_rejected_at_submit():
    with pytest.raises(SpecError, match="docker.volumes: docker volume 'data' is malformed"):
        make(executor="docker", docker={"image": "img", "volumes": ["data"]})
    assert make(executor="docker", docker={"image": "i", "volumes": ["/d:/data:rw"]}).docker.volumes


def test_secret_env_must_name_variables_of_env():
    with pytest.raises(SpecError) as info:
        make(env={"A": "1"}, secret_env=["A", "API_KEY"])
    text = str(info.value)
    assert "secret_env: 'API_KEY' not in env" in text and "env={'NAME': value}" in text


def test_stored_form_masks_secret_values_and_repo_credentials():
    spec = make(repo="https://bot:tok-1@example.com/r.git", env={"KEY": "v-2", "PLAIN": "p"},
                secret_env=["KEY", "KEY"])  # fmt: skip
    assert spec.secret_env == ["KEY"]
    stored = spec.to_json()
    assert stored["env"] == {"KEY": "***", "PLAIN": "p"} and stored["secret_env"] == ["KEY"]
    assert stored["repo"] == "https://example.com/r.git"
    assert "v-2" not in json.dumps(stored) and "tok-1" not in json.dumps(stored)
    full = spec.model_dump(mode="json")  # what the Celery message carries
    assert full["env"]["KEY"] == "v-2" and full["repo"] == "https://bot:tok-1@example.com/r.git"
    assert TaskSpec.parse(stored).masked_names == ["KEY"] and spec.masked_names == []


def test_a_spec_with_nothing_to_hide_is_its_own_masked_form():
    spec = make(env={"A": "1"})
    assert spec.masked() is spec and TaskSpec.parse(spec.to_json()) == spec


def test_options_built_directly_raise_spec_error_with_their_own_fields():
    from celery_agent.spec import CondaOptions, DockerOptions

    with pytest.raises(
        SpecError, match="imag: unknown field; known fields: image, install"
    ) as info:
        DockerOptions(imag="python:3.11")
    assert "image" in info.value.field and isinstance(info.value, ValueError)
    with pytest.raises(SpecError, match="exactly one of"):
        CondaOptions()
    with pytest.raises(SpecError, match="docker.pul: unknown field; known fields: image, install"):
        TaskSpec.parse({"repo": "r", "entry": "t.py", "executor": "docker",
                        "docker": {"image": "x", "pul": "never"}})  # fmt: skip
