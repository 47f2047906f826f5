"""An S3-compatible HTTP server for the tests: moto's standalone server on a free loopback port,
with credentials of its own that the tests hand to workers through their environment only."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery_agent.testing import wait_for

MOTO = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]


class S3Server:
    """Where the server answers, and the credentials a worker (or a user) gives s3fs."""

    SETUP_ACTIONS = 4  #: requests :meth:`read_only` makes before a server with IAM checks them

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.key = "AKIA" + secrets.token_hex(8).upper()  #: unlikely to appear by chance
        self.secret = secrets.token_urlsafe(30)
        self.proc: Any = None  #: the server's process, once started

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """The server stops answering (its process is stopped; connections are still accepted
        and wait) until the block ends: a store that hangs mid-transfer."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def argv(self) -> list[str]:
        """The command that serves S3 on ``port``."""
        return [*MOTO, "-p", str(self.port)]

    def wait_ready(self, timeout: float = 60) -> S3Server:
        """Wait until the server answers HTTP."""

        def answers() -> bool:
            urllib.request.urlopen(self.endpoint, timeout=2).close()
            return True

        wait_for(
            f"an S3 server at {self.endpoint}", answers, timeout, every=0.1, retry_on=(OSError,)
        )
        return self

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment a worker gets to reach the store (the usual variables of boto)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fs(self) -> Any:
        """An s3fs filesystem on the server, credentials given directly (not through the
        environment, which the test process keeps free of them)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True)  # fmt: skip

    def bucket(self, name: str) -> str:
        """Create bucket ``name``; returns it."""
        self.fs().mkdir(name)
        return name


def read_only(server: S3Server, bucket: str) -> dict[str, str]:
    """On a server that checks IAM (its first SETUP_ACTIONS requests unchecked): make ``bucket``
    and a user who may read it but not write; returns that user's environment for a worker."""
    import json

    import boto3

    kw = {"endpoint_url": server.endpoint, "aws_access_key_id": server.key,
          "aws_secret_access_key": server.secret, "region_name": "us-east-1"}  # fmt: skip
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    return server.env() | {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}  # fmt: skip


def read_tree(fs: Any, root: str) -> dict[str, bytes]:
    """Every object under ``root`` (a bucket path), by its path relative to it."""
    return {str(Path(p).relative_to(root)): fs.cat_file(p) for p in fs.find(root)}
