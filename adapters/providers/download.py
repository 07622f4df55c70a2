"""The streaming download every hosted provider shares for fetching a finished video.

Results are large (hundreds of megabytes at 1080p) and arrive over links that expire, move or
answer ``503`` for a while, so the download streams chunk by chunk (memory stays flat whatever the
size) and sorts failures into what the job engine acts on: ``retryable`` ones make the job try
again at its next status look-up, the others end it with a reason a user can read. Link URLs
carry signatures in their query, so messages name the host and path, never the whole URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from bot.errors import ProviderError, R2VError

DEFAULT_CHUNK_SIZE = 256 * 1024

#: Answers meaning the result is gone for good: asking again cannot bring it back.
_GONE = frozenset({404, 410})
#: Answers meaning a signed link expired or was refused; the next status look-up may hand out a
#: fresh one, so these are worth another try.
_FORBIDDEN = frozenset({401, 403})


async def stream_download(
    client: httpx.AsyncClient,
    url: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_bytes: int | None = None,
) -> AsyncIterator[bytes]:
    """GET ``url`` (following redirects) and yield its body in chunks of about ``chunk_size``.

    Raises ``ProviderError``:
    - ``result_missing`` (not retryable) for 404 or 410;
    - ``result_unavailable`` (retryable) for 401, 403, 429, a 5xx, or a transport failure at any
      point of the transfer;
    - ``result_refused`` (not retryable) for any other answer that is not a success, a link that
      is no http(s) URL, or redirects in a loop.

    With ``max_bytes``, a declared ``Content-Length`` over it is refused as ``too_large`` (an
    ``R2VError``) before a byte of the body is read, and so is a body that turns out longer.
    """
    where = _describe(url)
    try:
        async with client.stream("GET", url, follow_redirects=True) as response:
            _check_status(response, where)
            if max_bytes is not None:
                _check_declared_size(response, max_bytes, where)
            received = 0
            async for chunk in response.aiter_bytes(chunk_size):
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise _too_large(max_bytes, where)
                yield chunk
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.TooManyRedirects) as exc:
        raise ProviderError(
            f"the result link {where} cannot be downloaded ({type(exc).__name__}).",
            code="result_refused",
            retryable=False,
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(
            f"the download of the result from {where} broke off ({type(exc).__name__}); "
            "it will be tried again.",
            code="result_unavailable",
            retryable=True,
        ) from exc


def _check_status(response: httpx.Response, where: str) -> None:
    status = response.status_code
    if response.is_success:
        return
    if status in _GONE:
        raise ProviderError(
            f"the result link answered {status} (no such file) at {where}: the provider no "
            "longer has this video; generate it again.",
            code="result_missing",
            retryable=False,
        )
    if status == 429 or status >= 500 or status in _FORBIDDEN:
        raise ProviderError(
            f"the result link answered {status} at {where}; the download will be tried again.",
            code="result_unavailable",
            retryable=True,
        )
    raise ProviderError(
        f"the result link answered {status} at {where}, which is not a video download.",
        code="result_refused",
        retryable=False,
    )


def _check_declared_size(response: httpx.Response, max_bytes: int, where: str) -> None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, where, declared=int(declared))


def _too_large(max_bytes: int, where: str, *, declared: int | None = None) -> R2VError:
    size = f"{_megabytes(declared)} MB" if declared is not None else "more"
    return R2VError(
        f"the result at {where} is {size}; results up to {_megabytes(max_bytes)} MB are accepted.",
        code="too_large",
    )


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0")


def _describe(url: str) -> str:
    """The URL without its query, user or password: safe to show and to log."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or '?'}{port}{parts.path}"
