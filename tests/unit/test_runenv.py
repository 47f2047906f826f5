from __future__ import annotations

from celery_agent import runenv


def test_worker_secrets_and_python_flags_do_not_reach_the_run():
    base = {"PATH": "/usr/bin", "HOME": "/root", "CELERY_AGENT_GIT_TOKEN": "s3cret",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": "/worker", "LC_ALL": "C"}  # fmt: skip
    env = runenv.build(base=base, spec_env={}, agent={"CELERY_AGENT_RUN_ID": "r1"})
    assert "CELERY_AGENT_GIT_TOKEN" not in env and "PYTHONDONTWRITEBYTECODE" not in env
    assert "PYTHONPATH" not in env
    assert env["LC_ALL"] == "C" and env["CELERY_AGENT_RUN_ID"] == "r1"


def test_spec_env_wins_and_path_prefix_goes_first():
    env = runenv.build(
        base={"PATH": "/usr/bin"},
        spec_env={"OMP_NUM_THREADS": "8", "PYTHONDONTWRITEBYTECODE": "1"},
        agent={},
        path_prefix=["/env/bin"],
        threads=2,
    )
    assert env["PATH"] == "/env/bin:/usr/bin"
    assert env["OMP_NUM_THREADS"] == "8" and env["MKL_NUM_THREADS"] == "2"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_cpu_share_divides_cores_by_pool_size():
    cores = runenv.cpu_share({runenv.CONCURRENCY_ENV: "1"})
    assert cores >= 1
    assert runenv.cpu_share({runenv.CONCURRENCY_ENV: "1000"}) == 1
    assert runenv.cpu_share({runenv.CONCURRENCY_ENV: "x"}) >= 1


def test_spec_pythonpath_does_not_displace_the_hook_path_the_agent_merged():
    env = runenv.build(
        base={}, spec_env={"PYTHONPATH": "/mine"}, agent={"PYTHONPATH": "/hook:/mine"}
    )
    assert env["PYTHONPATH"] == "/hook:/mine"


def test_secret_values_are_scrubbed_from_log_lines():
    env = {"CELERY_AGENT_REDIS_URL": "redis://:pw@h:6379/0", "PATH": "/bin"}
    secrets = runenv.secret_values(env)
    assert secrets == ["redis://:pw@h:6379/0"]
    assert runenv.scrub(["url redis://:pw@h:6379/0 ok", "plain"], secrets) == [
        "url *** ok",
        "plain",
    ]
    assert runenv.secret_values({"CELERY_AGENT_REDIS_URL": "redis://h:6379/0"}) == []


def test_values_named_secret_are_scrubbed_longest_first_and_empty_ones_ignored():
    env = {"A": "tok", "B": "tok-longer", "C": "", "PLAIN": "tok-plain"}
    env[runenv.SECRET_NAMES_ENV] = "A, B,C"
    secrets = runenv.secret_values(env)
    assert secrets == ["tok-longer", "tok"]
    assert runenv.scrub(["x tok-longer y tok z"], secrets) == ["x *** y *** z"]
    assert runenv.redacted(env)["A"] == "***" and runenv.redacted(env)["PLAIN"] == "tok-plain"
    assert runenv.secret_values({"A": "tok"}) == [], "only names marked secret count"


def test_secret_names_reach_the_run_through_its_environment():
    env = runenv.build(base={}, spec_env={"K": "v", runenv.SECRET_NAMES_ENV: "K"}, agent={})
    assert runenv.secret_values(env) == ["v"]
