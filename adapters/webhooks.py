"""Standard Webhooks signing and checking (https://www.standardwebhooks.com/).

The storyboard provider and our GPU worker sign their callbacks this way, and Replicate does too,
so one implementation serves them all. It is written on ``hmac`` directly rather than on the
``standardwebhooks`` package because that package decodes bodies as UTF-8, cannot be given a
clock, and fails with a bare ``ValueError`` on a malformed signature list; here every rejection is
a ``WebhookRejected`` whose message says what was wrong.

``send_signed`` is the sending side both of our senders share: sign, POST, retry on a schedule
under one message id, and log failures without the URL's query or the secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bot.errors import ConfigurationError, WebhookRejected

SECRET_PREFIX = "whsec_"
#: How far a webhook's timestamp may be from our clock, either way (the specification's 5 minutes).
DEFAULT_TOLERANCE = 300

_ID = "webhook-id"
_TIMESTAMP = "webhook-timestamp"
_SIGNATURE = "webhook-signature"

#: Seconds between delivery attempts: four attempts in all, over about ten seconds.
DEFAULT_BACKOFF = (0.5, 2.0, 8.0)
#: Seconds one delivery attempt may take.
DEFAULT_SEND_TIMEOUT = 10.0

log = logging.getLogger(__name__)


def new_secret() -> str:
    """A fresh signing secret in the specification's form: ``whsec_`` and 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 18 random bytes."""
    return "msg_" + secrets.token_urlsafe(18)


def _key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part of ``whsec_<base64>``."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigurationError(
            "The webhook signing secret is not valid: expected whsec_ followed by base64 text."
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``{msg_id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of a signed webhook.

    A retried delivery should pass the first attempt's ``msg_id`` so the receiver can tell it is
    the same message; the timestamp is the attempt's own (now, unless given).
    """
    msg_id = msg_id or new_message_id()
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        _ID: msg_id,
        _TIMESTAMP: str(timestamp),
        _SIGNATURE: sign(secret, msg_id, timestamp, body),
    }


async def send_signed(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: str,
    *,
    backoff: Sequence[float] = DEFAULT_BACKOFF,
    attempt_timeout: float = DEFAULT_SEND_TIMEOUT,
    what: str = "Webhook",
    content_type: str = "application/json",
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> bool:
    """POST ``body`` to ``url`` signed with ``secret``; answer whether a 2xx came back.

    A failed attempt (a transport error or a status other than 2xx) is tried again after each
    wait in ``backoff`` in turn, so ``len(backoff) + 1`` attempts in all. Every attempt carries
    the same ``webhook-id`` (the receiver can tell a retry from a new message), is signed afresh
    with its own timestamp, and may take ``attempt_timeout`` seconds. Each failure is logged as
    a warning that starts with ``what`` (say "Webhook for task_1") and names the URL without
    its query, user or password (a receiver's token often rides in the query); neither the
    secret nor the signature is logged. Cancelling the caller stops the retries.
    """
    msg_id = new_message_id()
    where = without_secrets(url)
    attempts = len(backoff) + 1
    for attempt in range(1, attempts + 1):
        headers = signed_headers(secret, body, msg_id=msg_id)
        headers["content-type"] = content_type
        try:
            response = await client.post(
                url, content=body, headers=headers, timeout=attempt_timeout
            )
        except httpx.HTTPError as exc:
            reason = type(exc).__name__  # not str(exc), which can quote the whole URL
        else:
            if response.is_success:
                return True
            reason = f"HTTP {response.status_code}"
        log.warning(
            "%s to %s failed (%s), attempt %d of %d", what, where, reason, attempt, attempts
        )
        if attempt < attempts:
            await sleep(backoff[attempt - 1])
    return False


def without_secrets(url: str) -> str:
    """A URL fit for logs: no query or fragment (tokens live there) and no user or password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Raise ``WebhookRejected`` unless ``body`` was signed with ``secret`` recently.

    Header names are compared without regard to case. The signature header may hold several
    space-separated signatures (the sender is rotating keys); any ``v1`` one that matches is
    enough, and versions we do not know are skipped.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(_ID, "").strip()
    raw_timestamp = lowered.get(_TIMESTAMP, "").strip()
    signatures = lowered.get(_SIGNATURE, "").strip()
    missing = [
        name
        for name, value in ((_ID, msg_id), (_TIMESTAMP, raw_timestamp), (_SIGNATURE, signatures))
        if not value
    ]
    if missing:
        raise WebhookRejected(
            f"The webhook is missing the {', '.join(missing)} header(s); "
            "a signed webhook carries webhook-id, webhook-timestamp and webhook-signature."
        )
    timestamp = check_timestamp(raw_timestamp, now=now, tolerance=tolerance)
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    # Every entry is compared (no early exit) so timing says nothing about which one matched.
    matched = False
    for entry in signatures.split():
        version, _, _ = entry.partition(",")
        if version == "v1" and hmac.compare_digest(entry.encode("ascii", "replace"), expected):
            matched = True
    if not matched:
        raise WebhookRejected(
            "The webhook's signature does not match its body: it was altered or signed with "
            "another secret."
        )


def check_timestamp(
    raw: str, *, now: float | None = None, tolerance: int = DEFAULT_TOLERANCE
) -> int:
    """A webhook timestamp (unix seconds) within ``tolerance`` of our clock, or a rejection.

    Shared by every signing scheme: a replayed webhook carries its old timestamp.
    """
    try:
        timestamp = int(raw.strip())
    except ValueError:
        raise WebhookRejected(
            f"The webhook timestamp “{raw[:40]}” is not a whole number of seconds since 1970."
        ) from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookRejected(
            f"The webhook's timestamp is {abs(current - timestamp):.0f} s away from our clock; "
            f"at most {tolerance} s either way is accepted."
        )
    return timestamp


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value whatever the case of its name ('' when absent)."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), "").strip()


def load_or_create_secret(path: Path) -> str:
    """The signing secret kept in ``path``, made (readable by its owner alone) at first start."""
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = new_secret()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process made it between our read and our create: theirs wins.
            return load_or_create_secret(path)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secret + "\n")
        return secret
    try:
        _key(secret)
    except ConfigurationError:
        raise ConfigurationError(
            f"The webhook secret in {path} is not valid: expected whsec_ followed by base64 "
            "text. Delete the file to have a new one made."
        ) from None
    return secret
