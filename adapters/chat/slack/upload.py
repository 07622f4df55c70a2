"""Posting a finished video into a thread: Slack's three-step external upload, streamed.

``AsyncWebClient.files_upload_v2`` makes the same three calls (``files.getUploadURLExternal``, a
POST of the bytes, ``files.completeUploadExternal``) but first reads the whole file into memory
with a blocking ``open().read()`` on the event loop, and POSTs it from memory. Results run to
hundreds of megabytes, so here the bytes go from disk in chunks, each read in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from slack_sdk.web.async_client import AsyncWebClient

from adapters.local_files import local_file
from bot.errors import R2VError

#: Seconds without progress before an upload is given up (connect, each read and write).
UPLOAD_TIMEOUT = 300.0


async def upload_file(
    client: AsyncWebClient,
    path: Path,
    *,
    channel: str,
    thread_ts: str | None,
    filename: str,
    title: str,
    comment: str,
) -> str:
    """Upload ``path`` and share it in ``channel`` (in the thread of ``thread_ts``) with
    ``comment`` as its message; answers the new file's id."""
    size = (await asyncio.to_thread(path.stat)).st_size
    ticket = await client.files_getUploadURLExternal(filename=filename, length=size)
    upload_url, file_id = str(ticket["upload_url"]), str(ticket["file_id"])
    # The upload URL is pre-signed: it takes no token, and none is sent to it.
    async with httpx.AsyncClient(timeout=UPLOAD_TIMEOUT) as http:
        response = await http.post(
            upload_url,
            content=local_file(path).open(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
    if response.status_code != 200:
        raise R2VError(
            f"Slack refused the upload of {filename} ({response.status_code}).",
            code="upload_failed",
        )
    await client.files_completeUploadExternal(
        files=[{"id": file_id, "title": title}],
        channel_id=channel,
        thread_ts=thread_ts,
        initial_comment=comment,
    )
    return file_id
