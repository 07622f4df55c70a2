"""Standard Webhooks: what we sign matches the specification, and what we accept is genuine."""

from __future__ import annotations

import base64
import json
import logging
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.webhooks import (
    load_or_create_secret,
    new_secret,
    send_signed,
    sign,
    signed_headers,
    verify,
    without_secrets,
)
from bot.errors import ConfigurationError, WebhookRejected

# The specification's own test vector (PROVIDERS.md, "Standard Webhooks").
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
HEADERS = {
    "webhook-id": MSG_ID,
    "webhook-timestamp": str(TIMESTAMP),
    "webhook-signature": SIGNATURE,
}


def test_sign_matches_the_specification_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_the_specification_vector_verifies() -> None:
    verify(SECRET, HEADERS, BODY, now=TIMESTAMP + 10)


def test_header_names_are_case_insensitive() -> None:
    verify(SECRET, {k.title(): v for k, v in HEADERS.items()}, BODY, now=TIMESTAMP)


def test_any_matching_v1_signature_among_several_is_accepted() -> None:
    other = sign(new_secret(), MSG_ID, TIMESTAMP, BODY)
    listed = f"v2,{SIGNATURE[3:]} {other} nonsense {SIGNATURE}"
    verify(SECRET, {**HEADERS, "webhook-signature": listed}, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("secret", "headers", "body", "now", "reason"),
    [
        (SECRET, HEADERS, b'{"test": 2432232315}', TIMESTAMP, "signature does not match"),
        (new_secret(), HEADERS, BODY, TIMESTAMP, "signature does not match"),
        (SECRET, {**HEADERS, "webhook-id": "msg_other"}, BODY, TIMESTAMP, "does not match"),
        (SECRET, HEADERS, BODY, TIMESTAMP + 301, "301 s away"),
        (SECRET, HEADERS, BODY, TIMESTAMP - 301, "301 s away"),
        (SECRET, {**HEADERS, "webhook-timestamp": "soon"}, BODY, TIMESTAMP, "whole number"),
        (SECRET, {**HEADERS, "webhook-signature": "v2," + SIGNATURE[3:]}, BODY, TIMESTAMP, "match"),
        (SECRET, {**HEADERS, "webhook-signature": "garbage"}, BODY, TIMESTAMP, "does not match"),
        (SECRET, {"webhook-id": MSG_ID}, BODY, TIMESTAMP, "webhook-timestamp, webhook-signature"),
        (SECRET, {}, BODY, TIMESTAMP, "missing"),
    ],
    ids=[
        "altered-body",
        "wrong-secret",
        "other-id",
        "too-old",
        "from-the-future",
        "bad-timestamp",
        "unknown-version-only",
        "malformed-signature",
        "missing-headers",
        "no-headers",
    ],
)
def test_rejections_say_what_was_wrong(
    secret: str, headers: dict[str, str], body: bytes, now: int, reason: str
) -> None:
    with pytest.raises(WebhookRejected, match=reason) as caught:
        verify(secret, headers, body, now=now)
    assert caught.value.code == "webhook_rejected"


def test_five_minutes_either_way_is_still_accepted() -> None:
    verify(SECRET, HEADERS, BODY, now=TIMESTAMP + 300)
    verify(SECRET, HEADERS, BODY, now=TIMESTAMP - 300)


def test_signed_headers_verify_now_and_keep_a_given_message_id() -> None:
    secret = new_secret()
    body = b'{"type": "video.completed"}'
    headers = signed_headers(secret, body, msg_id="msg_retry")
    assert headers["webhook-id"] == "msg_retry"
    verify(secret, headers, body)
    fresh = signed_headers(secret, body)
    assert fresh["webhook-id"].startswith("msg_") and fresh["webhook-id"] != "msg_retry"
    verify(secret, fresh, body)


def test_new_secrets_are_24_random_bytes_in_whsec_form() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 24


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", ""])
def test_a_malformed_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="whsec_"):
        sign(secret, MSG_ID, TIMESTAMP, BODY)


def test_secret_file_is_created_private_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "webhook_secret"
    created = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == created
    verify(created, signed_headers(created, BODY), BODY)


def test_a_damaged_secret_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "webhook_secret"
    path.write_text("whsec_%%%\n")
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        load_or_create_secret(path)


# Sending ------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A loopback endpoint that keeps what arrives and answers the statuses it is given."""

    answers: list[int] = field(default_factory=list)
    arrived: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append((dict(request.headers), await request.read()))
        return web.Response(status=self.answers.pop(0) if self.answers else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/job1", receiver.handle)
    server = TestServer(app)
    await server.start_server()
    receiver.url = str(server.make_url("/hooks/job1")) + "?t=job-token"
    yield receiver
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


class Waits:
    """Stands in for ``asyncio.sleep``: notes each wait instead of waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_send_signed_retries_a_500_under_the_same_webhook_id(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    secret = new_secret()
    body = json.dumps({"type": "task.succeeded", "data": {"id": "task_1"}}).encode()
    receiver.answers = [500]
    waits = Waits()

    delivered = await send_signed(client, receiver.url, body, secret, sleep=waits)

    assert delivered is True
    assert waits.seconds == [0.5]  # the first wait of the default backoff, and no other
    (first_headers, first_body), (second_headers, second_body) = receiver.arrived
    assert first_body == second_body == body
    assert first_headers["webhook-id"] == second_headers["webhook-id"]
    assert first_headers["webhook-id"].startswith("msg_")
    for headers in (first_headers, second_headers):
        assert headers["Content-Type"] == "application/json"
        verify(secret, headers, body)


async def test_send_signed_gives_up_after_the_backoff_and_logs_no_token_or_secret(
    receiver: Receiver, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = new_secret()
    receiver.answers = [500, 503, 502, 200]  # the 200 would come too late
    waits = Waits()
    caplog.set_level(logging.WARNING, logger="adapters.webhooks")

    delivered = await send_signed(
        client,
        receiver.url,
        b"{}",
        secret,
        backoff=(0.25, 1.0),
        what="Webhook for task_1",
        sleep=waits,
    )

    assert delivered is False
    assert waits.seconds == [0.25, 1.0]
    assert len(receiver.arrived) == 3  # one attempt, then one after each wait
    assert len({headers["webhook-id"] for headers, _ in receiver.arrived}) == 1
    messages = [record.getMessage() for record in caplog.records]
    where = receiver.url.split("?")[0]
    assert messages == [
        f"Webhook for task_1 to {where} failed (HTTP 500), attempt 1 of 3",
        f"Webhook for task_1 to {where} failed (HTTP 503), attempt 2 of 3",
        f"Webhook for task_1 to {where} failed (HTTP 502), attempt 3 of 3",
    ]
    assert all("job-token" not in m and secret not in m for m in messages)


async def test_send_signed_counts_an_unreachable_receiver_as_undelivered(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as unused:  # a loopback port with nothing listening on it
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    waits = Waits()
    caplog.set_level(logging.WARNING, logger="adapters.webhooks")

    url = f"http://127.0.0.1:{port}/hook?t=job-token"
    assert await send_signed(client, url, b"{}", new_secret(), backoff=(0.1,), sleep=waits) is False
    assert waits.seconds == [0.1]
    assert [r.getMessage() for r in caplog.records] == [
        f"Webhook to http://127.0.0.1:{port}/hook failed (ConnectError), attempt {n} of 2"
        for n in (1, 2)
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bot.example/hooks/x?t=token", "https://bot.example/hooks/x"),
        ("https://user:pass@bot.example:8443/h#frag", "https://bot.example:8443/h"),
        ("http://[::1]:8080/h?t=1", "http://[::1]:8080/h"),
    ],
)
def test_urls_are_logged_without_query_or_credentials(url: str, shown: str) -> None:
    assert without_secrets(url) == shown
