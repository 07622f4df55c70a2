"""A ``multipart/form-data`` upload of one file, streamed from disk: for upload APIs that take a
form field rather than a pre-signed PUT (AtlasCloud's ``uploadMedia``; Replicate's ``/v1/files``
has the same shape)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from bot.models import IncomingFile


class MultipartFile:
    """A ``multipart/form-data`` body of one file field, streamed and sendable again.

    Its length is known before a byte is read, so it goes out with a ``Content-Length`` (some
    upload endpoints refuse chunked bodies); each iteration reads the file anew, so a retried
    upload starts from its first byte.
    """

    def __init__(self, field: str, filename: str, mime: str, file: IncomingFile) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file = file
        self.length = len(self._head) + (file.declared_size or 0) + len(self._tail)

    @property
    def headers(self) -> dict[str, str]:
        """The request headers that describe this body."""
        return {"Content-Type": self.content_type, "Content-Length": str(self.length)}

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield self._head
        async for chunk in self._file.open():
            yield chunk
        yield self._tail
