"""Redis URLs: the one place that turns a URL into a redis-py client, and into Celery's settings.

Three kinds of URL serve the agent's state store, the broker and the result backend alike:

- ``redis://[[user]:password@]host[:port][/db]`` (and ``unix:///path/redis.sock?db=N``);
- ``rediss://...`` the same over TLS: ``ssl_ca_certs=/path/ca.pem`` names the CA that signed the
  server's certificate, ``ssl_cert_reqs=required|optional|none`` how strictly it is checked
  (``required`` unless given), ``ssl_certfile`` / ``ssl_keyfile`` a client certificate;
- ``sentinel://[[user]:password@]host:port[;sentinel://host2:port2...][/db]?master_name=NAME``:
  the sentinels say where the primary called NAME is, and the clients follow it through a
  failover. The password is the primary's; ``sentinel_password=`` is the sentinels' own.

Other redis-py URL options (``socket_timeout=5`` ...) apply to the agent's store only. Celery takes
the same servers with the options split out (the master name in ``*_transport_options``, TLS in
``broker_use_ssl`` / ``redis_backend_use_ssl``): :func:`celery_form` does that split.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.sentinel
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, AbstractConnection

from .errors import ConfigError

SCHEMES = ("redis", "rediss", "unix", "sentinel")
SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
SENTINEL_PARAMS = ("master_name", "sentinel_password")
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
CONNECT_TIMEOUT = 10.0  #: seconds to connect (and finish a TLS handshake) unless the URL says
FORMS = (
    "write it as redis://[:PASSWORD@]HOST:PORT/DB, "
    "rediss://[:PASSWORD@]HOST:PORT/DB?ssl_ca_certs=/path/ca.pem, or "
    "sentinel://HOST:PORT[;sentinel://HOST2:PORT2]/DB?master_name=NAME"
)
_DEFAULT_PORT = {"redis": 6379, "rediss": 6379, "sentinel": 26379}


@dataclass(frozen=True)
class RedisURL:
    """A checked Redis URL: where the server (or its sentinels) is, and how to talk to it."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str | None = None  #: the socket of a unix:// URL
    tls: dict[str, str] = field(default_factory=dict)  #: ssl_* parameters of a rediss:// URL
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)  #: other redis-py options (store only)

    def where(self) -> str:
        """The servers, for messages (no password)."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        master = f" (master {self.master_name})" if self.master_name else ""
        return f"{self.scheme}://{hosts}/{self.db}{master}"


def parse(url: str) -> RedisURL:
    """Check ``url`` and split it up; raises ConfigError naming what is wrong and how to write it."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        problem = f"scheme {scheme!r} is not a Redis one" if scheme else "it has no scheme"
        raise _bad(url, f"{problem} (redis, rediss, unix or sentinel)")
    if scheme == "sentinel":
        return _parse_sentinel(url)
    if ";" in url:
        raise _bad(url, "only sentinel:// URLs list several servers (separated by ';')")
    parts = urlsplit(url)
    query = _query(url, parts.query, scheme)
    db = _db(url, query.pop("db", None) or (parts.path if scheme != "unix" else ""))
    user, password = _unq(parts.username), _unq(parts.password)
    tls = {k: query.pop(k) for k in SSL_PARAMS if k in query}
    if scheme == "rediss":
        tls["ssl_cert_reqs"] = _cert_reqs(url, tls.get("ssl_cert_reqs", "required"))
    if scheme == "unix":
        if not parts.path:
            raise _bad(url, "it names no socket", "write it as unix:///path/to/redis.sock?db=0")
        return RedisURL(scheme, (), db, user, password, unquote(parts.path), options=query)
    hosts = ((_host(url, parts.hostname), _port(url, parts, scheme)),)
    return RedisURL(scheme, hosts, db, user, password, tls=tls, options=query)


def connect(url: str | RedisURL, **kwargs: Any) -> redis.Redis:
    """A client on a new connection pool; ``kwargs`` are redis-py options the URL may override."""
    target = parse(url) if isinstance(url, str) else url
    _check_files(target)
    kw: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, **kwargs, **target.options}
    kw |= {"db": target.db, "username": target.username, "password": target.password}
    if target.scheme == "sentinel":
        return _sentinel_client(target, kw)
    if target.scheme == "unix":
        kw |= {
            "path": target.path,
            "connection_class": _explained(redis.UnixDomainSocketConnection),
        }
        kw.pop("socket_connect_timeout")
    else:
        kind = redis.SSLConnection if target.scheme == "rediss" else redis.Connection
        host, port = target.hosts[0]
        kw |= {"host": host, "port": port, "connection_class": _explained(kind), **target.tls}
    return redis.Redis(connection_pool=redis.ConnectionPool(**kw))


def celery_form(url: str) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(the URL as Celery takes it, transport options it needs, TLS settings or None).

    A URL that is not a Redis one (amqp://, rpc:// ...) comes back as it is.
    """
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        return url, {}, None
    target = parse(url)
    if target.scheme == "unix":
        return url, {}, None
    auth = _userinfo(target)
    chunks = [f"{target.scheme}://{auth}{_bracket(h)}:{p}/{target.db}" for h, p in target.hosts]
    options: dict[str, Any] = {}
    if target.master_name:
        options["master_name"] = target.master_name
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    tls = None
    if target.scheme == "rediss":
        tls = {k: CERT_REQS[v] if k == "ssl_cert_reqs" else v for k, v in target.tls.items()}
    return ";".join(chunks), options, tls


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@;?]*:)[^@/;]*@", r"\1***@", url)


# -- parsing ------------------------------------------------------------------------------------
def _parse_sentinel(url: str) -> RedisURL:
    hosts: list[tuple[str, int]] = []
    found: dict[str, set[str]] = {"db": set(), "user": set(), "password": set(), "query": set()}
    for chunk in url.split(";"):
        if not chunk.lower().startswith("sentinel://"):
            raise _bad(url, f"{chunk!r} is not a sentinel://HOST:PORT address")
        parts = urlsplit(chunk)
        hosts.append((_host(url, parts.hostname), _port(url, parts, "sentinel")))
        for key, value in (("db", parts.path.strip("/")), ("user", parts.username),
                           ("password", parts.password), ("query", parts.query)):  # fmt: skip
            if value:
                found[key].add(value)
    for key, values in found.items():
        if len(values) > 1:
            raise _bad(url, f"its addresses give different {key}s; give it once")
    one = {key: next(iter(values), None) for key, values in found.items()}
    query = _query(url, one["query"] or "", "sentinel")
    db = _db(url, query.pop("db", None) or one["db"] or "")
    return RedisURL(
        "sentinel", tuple(hosts), db, _unq(one["user"]), _unq(one["password"]),
        master_name=query.pop("master_name", None),
        sentinel_password=query.pop("sentinel_password", None), options=query,
    )  # fmt: skip


def _query(url: str, text: str, scheme: str) -> dict[str, Any]:
    raw = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
    known = {*URL_QUERY_ARGUMENT_PARSERS, *SSL_PARAMS, *SENTINEL_PARAMS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(url, f"unknown parameter(s) {', '.join(unknown)}",
                   f"known parameters: {', '.join(sorted(known))}")  # fmt: skip
    if scheme != "rediss" and any(k.startswith("ssl_") for k in raw):
        hint = (
            "use rediss:// for TLS" if scheme != "sentinel" else "TLS to sentinels is not supported"
        )
        raise _bad(url, "ssl_* parameters need a rediss:// URL", hint)
    if scheme != "sentinel" and any(k in raw for k in SENTINEL_PARAMS):
        raise _bad(url, "master_name and sentinel_password are for sentinel:// URLs", FORMS)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            out[name] = parser(value) if parser and name != "db" else value
        except (TypeError, ValueError):
            raise _bad(url, f"parameter {name}={value!r} is not valid") from None
    return out


def _db(url: str, text: str) -> int:
    text = unquote(text).strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise _bad(url, f"database {text!r} is not a number", "end the URL with /0, /1 ...")
    return int(text)


def _host(url: str, host: str | None) -> str:
    if not host:
        raise _bad(url, "it names no host")
    return unquote(host)


def _port(url: str, parts: Any, scheme: str) -> int:
    try:
        return int(parts.port or _DEFAULT_PORT[scheme])
    except ValueError:
        raise _bad(url, "its port is not a number") from None


def _cert_reqs(url: str, value: str) -> str:
    name = value.lower().removeprefix("cert_")
    if name not in CERT_REQS:
        raise _bad(url, f"ssl_cert_reqs={value!r} is not one of required, optional, none")
    return name


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unq(text: str | None) -> str | None:
    return unquote(text) if text else None


def _userinfo(target: RedisURL) -> str:
    if not (target.username or target.password):
        return ""
    user = quote(target.username or "", safe="")
    return f"{user}:{quote(target.password or '', safe='')}@"


def _bad(url: str, problem: str, fix: str = FORMS) -> ConfigError:
    return ConfigError(f"Redis URL {redact(url)}: {problem}", fix)


def _check_files(target: RedisURL) -> None:
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = target.tls.get(name)
        if path and not Path(path).is_file():
            raise ConfigError(
                f"Redis URL {target.where()}: {name}={path} is not a readable file",
                f"copy the file there or point {name}= in the URL at it",
            )


# -- clients whose connection errors say what to do ------------------------------------------
def _sentinel_client(target: RedisURL, kw: dict[str, Any]) -> redis.Redis:
    if not target.master_name:
        raise _bad(target.where(), "it names no master",
                   "add ?master_name=NAME, the name in the sentinels' `sentinel monitor` line")  # fmt: skip
    side = {"socket_connect_timeout": kw["socket_connect_timeout"]}
    if target.sentinel_password:
        side["password"] = target.sentinel_password
    sentinels = redis.sentinel.Sentinel(list(target.hosts), sentinel_kwargs=side)
    kw["connection_class"] = _explained(redis.sentinel.SentinelManagedConnection)
    return sentinels.master_for(target.master_name, **kw)


class _Explained(AbstractConnection):
    """Mixed into a connection class: errors name their likely cause and fix."""

    def connect(self) -> None:
        try:
            super().connect()
        except redis.sentinel.MasterNotFoundError:
            raise redis.sentinel.MasterNotFoundError(_no_master(self)) from None

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().connect_check_health(*args, **kwargs)
        except redis.AuthenticationError as err:
            what = "refused the password" if self.password else "wants a password"
            raise redis.AuthenticationError(
                f"Redis at {self._host_error()} {what} ({err}): put the right one in the URL, "
                "redis://:PASSWORD@HOST:PORT/DB (USER:PASSWORD@ for an ACL user)"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as err:
            hint = _tls_hint(isinstance(self, redis.SSLConnection), str(err))
            if not hint:
                raise
            raise type(err)(f"{err} ({hint})") from None

    def _connect(self) -> Any:
        """Bound the TLS handshake too (redis-py waits for it without a timeout by default)."""
        if not isinstance(self, redis.SSLConnection) or self.socket_timeout:
            return super()._connect()  # type: ignore[safe-super]
        self.socket_timeout = self.socket_connect_timeout or CONNECT_TIMEOUT
        try:
            sock = super()._connect()  # type: ignore[safe-super]
        finally:
            self.socket_timeout = None
        sock.settimeout(None)
        return sock


_classes: dict[type, type] = {}


def _explained(kind: type) -> type:
    if kind not in _classes:
        _classes[kind] = type(f"Explained{kind.__name__}", (_Explained, kind), {})
    return _classes[kind]


def _tls_hint(tls: bool, text: str) -> str:
    if tls and "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the server's certificate is not signed by a CA this machine trusts: add "
            "ssl_ca_certs=/path/to/ca.pem to the rediss:// URL (ssl_cert_reqs=none skips the check)"
        )
    if tls and re.search(r"WRONG_VERSION_NUMBER|record layer|Timeout", text, re.I):
        return "the server did not answer in TLS: if this port speaks plain Redis, use redis://"
    if not tls and re.search(r"reset by peer|closed by server", text):
        return "the server hung up before answering: if this port speaks TLS, use rediss://"
    return ""


def _no_master(conn: Any) -> str:
    pool = conn.connection_pool
    where = ", ".join(
        "{host}:{port}".format(**s.connection_pool.connection_kwargs)
        for s in pool.sentinel_manager.sentinels
    )
    return (
        f"no primary named {pool.service_name!r} found: the sentinels at {where} do not know it, "
        "or none answered; check master_name= in the URL against their `sentinel monitor` line"
    )
