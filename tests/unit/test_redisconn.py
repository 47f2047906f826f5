"""Redis URLs: parsing, clear errors, clients, and the settings Celery gets for each kind."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis
import redis.sentinel

from celery_agent import redisconn
from celery_agent.app import create_app
from celery_agent.errors import ConfigError


def test_a_password_url_keeps_user_password_and_db():
    url = redisconn.parse("redis://bot:p%40ss@redis.example:6380/4")
    assert (url.scheme, url.hosts, url.db) == ("redis", (("redis.example", 6380),), 4)
    assert (url.username, url.password) == ("bot", "p@ss")
    assert (
        redisconn.parse("redis://:pw@h").hosts == (("h", 6379),)
        and redisconn.parse("redis://h").db == 0
    )


def test_a_tls_url_checks_certificates_unless_told_otherwise():
    assert redisconn.parse("rediss://h/0").tls == {"ssl_cert_reqs": "required"}
    url = redisconn.parse("rediss://h/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=CERT_NONE")
    assert url.tls == {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "none"}


def test_a_sentinel_url_lists_sentinels_and_names_the_master():
    url = redisconn.parse(
        "sentinel://:pw@s1:26380;sentinel://s2/3?master_name=main&sentinel_password=sp"
    )
    assert url.hosts == (("s1", 26380), ("s2", 26379)) and url.db == 3
    assert (url.password, url.master_name, url.sentinel_password) == ("pw", "main", "sp")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1/0", "scheme 'http' is not a Redis one"),
        ("localhost:6379", "it has no scheme"),
        ("redis://h:port/0", "its port is not a number"),
        ("redis://h:1/zero", "database 'zero' is not a number"),
        ("redis://h:1/0?colour=red", "unknown parameter(s) colour"),
        ("redis://h:1/0?ssl_ca_certs=/ca.pem", "ssl_* parameters need a rediss:// URL"),
        ("redis://h:1/0?master_name=x", "master_name and sentinel_password are for sentinel://"),
        ("rediss://h:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe' is not one of"),
        ("redis://h1:1;redis://h2:1/0", "only sentinel:// URLs list several servers"),
        ("sentinel://a:1/0;sentinel://b:1/2?master_name=m", "different dbs"),
        ("sentinel://a:1/0;redis://b:1/0", "is not a sentinel://HOST:PORT address"),
        ("redis://h:1/0?socket_timeout=soon", "parameter socket_timeout='soon' is not valid"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_how_to_write_it(url: str, says: str):
    with pytest.raises(ConfigError) as caught:
        redisconn.parse(url)
    assert says in caught.value.message and caught.value.hint


def test_errors_never_show_the_password():
    with pytest.raises(ConfigError) as caught:
        redisconn.parse("redis://:hunter2@h:1/x")
    assert "hunter2" not in str(caught.value) and ":***@h" in str(caught.value)
    assert redisconn.redact("sentinel://u:pw@a:1;sentinel://:pw@b:2") == (
        "sentinel://u:***@a:1;sentinel://:***@b:2"
    )


def test_clients_get_the_connection_class_of_their_kind(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked before connecting")
    plain = redisconn.connect("redis://:pw@h:7/2", decode_responses=True).connection_pool
    assert issubclass(plain.connection_class, redis.Connection)
    assert plain.connection_kwargs["password"] == "pw" and plain.connection_kwargs["db"] == 2
    tls = redisconn.connect(f"rediss://h:7/0?ssl_ca_certs={ca}").connection_pool
    assert issubclass(tls.connection_class, redis.SSLConnection)
    assert tls.connection_kwargs["ssl_ca_certs"] == str(ca)
    unix = redisconn.connect("unix:///run/redis.sock?db=3").connection_pool
    assert issubclass(unix.connection_class, redis.UnixDomainSocketConnection)
    pool = redisconn.connect("sentinel://s:1/0?master_name=main").connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool) and pool.service_name == "main"


def test_url_options_reach_the_store_client():
    pool = redisconn.connect(
        "redis://h/0?socket_timeout=2.5&health_check_interval=7"
    ).connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 2.5
    assert pool.connection_kwargs["health_check_interval"] == 7


def test_a_missing_certificate_file_or_master_name_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="ssl_ca_certs=.* is not a readable file"):
        redisconn.connect(f"rediss://h/0?ssl_ca_certs={tmp_path / 'nope.pem'}")
    with pytest.raises(ConfigError, match=r"names no master.*\?master_name=NAME"):
        redisconn.connect("sentinel://s:26379/0")


def test_celery_gets_sentinel_urls_with_the_master_in_transport_options():
    url, options, tls = redisconn.celery_form(
        "sentinel://:pw@s1:26379;sentinel://s2:26380/1?master_name=main&sentinel_password=sp"
    )
    assert url == "sentinel://:pw@s1:26379/1;sentinel://:pw@s2:26380/1"
    assert options == {"master_name": "main", "sentinel_kwargs": {"password": "sp"}} and tls is None


def test_celery_gets_tls_settings_apart_from_the_url():
    url, options, tls = redisconn.celery_form("rediss://:pw@h:6380/2?ssl_ca_certs=/ca.pem")
    assert (url, options) == ("rediss://:pw@h:6380/2", {})
    assert tls == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_non_redis_urls_pass_through_to_celery_as_they_are():
    for url in ("amqp://guest@rabbit//", "rpc://", "redis://h:1/0", "unix:///run/redis.sock"):
        assert redisconn.celery_form(url) == (url, {}, None)


def test_one_sentinel_url_configures_broker_and_backend():
    app = create_app({"CELERY_AGENT_REDIS_URL": "sentinel://:pw@s1:26379/0?master_name=main"})
    conf = app.conf
    assert conf.broker_url == conf.result_backend == "sentinel://:pw@s1:26379/0"
    assert conf.broker_transport_options["master_name"] == "main"
    assert conf.broker_transport_options["queue_order_strategy"] == "priority", "defaults stay"
    assert conf.result_backend_transport_options["master_name"] == "main"
    assert type(app.backend).__name__ == "SentinelBackend"
    assert app.connection_for_write().transport_options["master_name"] == "main"


def test_one_tls_url_configures_broker_and_backend_tls():
    app = create_app({"CELERY_AGENT_REDIS_URL": "rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem"})
    want = {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert app.conf.broker_use_ssl == want and app.conf.redis_backend_use_ssl == want
    # Celery's backend insists on ssl_cert_reqs for rediss:// and now finds it
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.connection_for_write().ssl == want


def test_a_plain_url_adds_no_tls_or_sentinel_settings():
    conf = create_app({"CELERY_AGENT_REDIS_URL": "redis://:pw@h:1/3"}).conf
    assert conf.broker_url == "redis://:pw@h:1/3" and not conf.broker_use_ssl
    assert "master_name" not in conf.broker_transport_options


def test_a_config_modules_transport_options_keep_their_keys_and_gain_the_master(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "sentinel_cfg.py").write_text(
        "broker_transport_options = {'visibility_timeout': 99}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = create_app({
        "CELERY_AGENT_CONFIG": "sentinel_cfg",
        "CELERY_AGENT_REDIS_URL": "sentinel://s:26379/0?master_name=main",
    }).conf  # fmt: skip
    assert conf.broker_transport_options == {"visibility_timeout": 99, "master_name": "main"}


def test_a_bad_url_does_not_break_the_app_import():
    conf = create_app({"CELERY_AGENT_REDIS_URL": "redis://h:1/x"}).conf
    assert conf.broker_url == "redis://h:1/x"  # Celery and the store each report it when used


def test_a_config_modules_own_sentinel_url_is_split_for_celery_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "own_url_cfg.py").write_text(
        "broker_url = 'sentinel://:pw@s:26379/2?master_name=main'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = create_app({"CELERY_AGENT_CONFIG": "own_url_cfg"}).conf
    assert conf.broker_url == "sentinel://:pw@s:26379/2"
    assert conf.broker_transport_options["master_name"] == "main"


def test_ipv6_hosts_keep_their_brackets_for_celery():
    assert redisconn.parse("redis://[::1]:6380/0").hosts == (("::1", 6380),)
    assert redisconn.celery_form("rediss://:pw@[::1]:6380/0")[0] == "rediss://:pw@[::1]:6380/0"
