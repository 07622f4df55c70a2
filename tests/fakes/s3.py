"""An S3-compatible store for tests: moto's standalone server, a separate process on loopback.

Our client talks to it over real HTTP with real SigV4 signatures; nothing of ours is replaced.
``MotoServer(locked=True)`` enforces moto's IAM checks, so only the keys it issued are accepted
(moto cannot serve presigned links in that mode, so the other tests use an open server, which
takes any keys). The test side inspects and changes the bucket behind our client's back with
plain boto3 (``admin``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx

from bot.settings import Settings, load_settings
from storage.s3 import S3Access

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
PR_SET_PDEATHSIG = 1
#: Keys an open server accepts (any would do).
OPEN_KEYS = ("AKIAOPENTESTKEY00000", "open-test-secret")


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): get SIGTERM when the thread that
    started it ends, so a test run that is killed leaves no server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """``python -m moto.server`` on a free loopback port; ``start`` waits until it answers.

    Start it from the thread that stays (the test's or the event loop's): the server ends with
    the thread that started it."""

    def __init__(self, *, locked: bool = False) -> None:
        self.locked = locked
        self.url = ""
        self.keys = OPEN_KEYS
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        for _ in range(5):  # another process may take the free port first
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MOTO_CALL_RESET_API": "false"},
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            if self._wait():
                break
            self.stop()
        else:
            raise RuntimeError("moto's server did not start")
        if self.locked:
            self.keys = self._issue_keys()
            httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0").raise_for_status()
        return self

    def _wait(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                httpx.get(f"{self.url}/moto-api/data.json", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            return True
        return False

    def _issue_keys(self) -> tuple[str, str]:
        """A user allowed everything on S3, and its keys (made before auth is switched on)."""
        iam = boto3.client("iam", **self._client_args(OPEN_KEYS))
        iam.create_user(UserName="bot")
        allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [allow]}
        iam.put_user_policy(UserName="bot", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="bot")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _client_args(self, keys: tuple[str, str]) -> dict[str, Any]:
        return {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": keys[0],
            "aws_secret_access_key": keys[1],
        }

    def admin(self) -> S3Client:
        """A plain boto3 client for the test's own look at the bucket."""
        client: S3Client = boto3.client("s3", **self._client_args(self.keys))
        return client

    def create_bucket(self, name: str) -> None:
        self.admin().create_bucket(Bucket=name)

    def access(self, *, keys: tuple[str, str] | None = None, attempts: int = 1) -> S3Access:
        """How our client reaches this server (one attempt per request: tests see faults at
        once instead of after botocore's backoff)."""
        access_key, secret = keys or self.keys
        return S3Access(
            endpoint_url=self.url,
            region=REGION,
            access_key_id=access_key,
            secret_access_key=secret,
            max_attempts=attempts,
            connect_timeout=2.0,
            read_timeout=10.0,
        )

    def settings(self, data_dir: Path, blob_url: str, **overrides: Any) -> Settings:
        """Bot settings whose ``R2V_BLOB_URL`` and ``AWS_*`` point at this server."""
        return load_settings(
            data_dir=data_dir,
            blob_url=blob_url,
            aws_endpoint_url=self.url,
            aws_region=REGION,
            aws_access_key_id=self.keys[0],
            aws_secret_access_key=self.keys[1],
            **overrides,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


@contextlib.contextmanager
def moto_with_bucket(bucket: str) -> Iterator[MotoServer]:
    """moto's server with one bucket made, for a test module's fixture; stopped after."""
    server = MotoServer().start()
    try:
        server.create_bucket(bucket)
        yield server
    finally:
        server.stop()
