"""Standard Webhooks: what we sign matches the specification, and what we accept is genuine."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from adapters.webhooks import load_or_create_secret, new_secret, sign, signed_headers, verify
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
