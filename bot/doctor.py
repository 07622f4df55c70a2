"""``r2v doctor``: check the set-up and say, line by line, what works and what to fix.

Part of the composition root: it opens the real storage to prove it works.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bot.cli import writable
from bot.errors import ConfigurationError, R2VError
from bot.jobs import PRICE_UNKNOWN
from bot.settings import PROVIDER_KEY_FIELDS, Settings, env_name


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    text: str
    essential: bool = True


def _encode_h264() -> str:
    """Encode a few frames with PyAV's H.264 encoder, in memory; answer the codec's name."""
    import av
    from PIL import Image

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(4):
            picture = Image.new("RGB", (64, 64), (i * 40, 0, 0))
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(stream.codec_context.name)


async def checks(settings: Settings) -> list[Check]:
    from storage.database import migrations_for, open_database, sqlite_path

    results: list[Check] = []
    data = settings.data_dir
    ok = await asyncio.to_thread(writable, data)
    results.append(
        Check(
            ok,
            f"data folder {data} is {'writable' if ok else 'NOT writable'}"
            + ("" if ok else " — set R2V_DATA_DIR to a folder the bot may write to"),
        )
    )
    if ok:
        where = settings.database_url or str(sqlite_path(None, settings.data_dir))
        try:
            db = await open_database(settings.database_url, settings.data_dir, migrate=False)
            try:
                version = await db.schema_version()
                latest = len(migrations_for(db.dialect))
            finally:
                await db.close()
            results.append(
                Check(
                    version <= latest,
                    f"{db.dialect} database opens (schema version {version} of {latest}"
                    + (", migrated at start)" if version < latest else ")"),
                )
            )
        except Exception as exc:
            results.append(Check(False, f"database {where} fails: {exc}"))
    if settings.blob_url:
        results.append(await _blob_check(settings))
    try:
        codec = await asyncio.to_thread(_encode_h264)
        results.append(Check(True, f"PyAV encodes H.264 ({codec})"))
    except Exception as exc:
        results.append(Check(False, f"PyAV cannot encode H.264: {exc}"))

    platforms = settings.chat_platforms
    results.append(
        Check(
            True,
            "chat: "
            + (
                ", ".join(platforms)
                if platforms
                else "no chat token set — `r2v run` opens the console"
            ),
            essential=False,
        )
    )
    results.extend(await _provider_checks(settings))
    results.append(Check(True, "provider storyboard: offline, always available", essential=False))
    results.append(
        Check(
            True, f"default provider order: {', '.join(settings.provider_order)}", essential=False
        )
    )
    if settings.public_url:
        results.append(
            Check(
                True,
                f"public URL {settings.public_url}: providers can call webhooks",
                essential=False,
            )
        )
    else:
        results.append(
            Check(
                True,
                "no R2V_PUBLIC_URL: hosted providers are polled (no webhooks)",
                essential=False,
            )
        )
    return results


async def _blob_check(settings: Settings) -> Check:
    """``R2V_BLOB_URL``: the folder is writable, or the bucket exists and our keys may write,
    read and remove an object in it."""
    from storage.blob_stores import blob_folder, open_blob_store
    from storage.blobs import never_referenced
    from storage.s3 import S3BlobStore

    try:
        folder = blob_folder(settings)
        if folder is not None:
            ok = await asyncio.to_thread(writable, folder)
            state = (
                "writable"
                if ok
                else "NOT writable — set R2V_BLOB_URL to a folder the bot may write to"
            )
            return Check(ok, f"blob folder {folder} is {state}")
        async with open_blob_store(settings, never_referenced) as store:
            assert isinstance(store, S3BlobStore)
            await store.probe()
    except R2VError as exc:
        return Check(False, f"blob store {settings.blob_url}: {exc.message}")
    return Check(
        True, f"blob store {settings.blob_url}: bucket found; objects written, read and removed"
    )


async def _provider_checks(settings: Settings) -> list[Check]:
    """For each provider whose key is set: one cheap authenticated call, and webhook readiness."""
    import httpx

    from adapters.http.media import MediaLinks
    from adapters.providers.base import ProviderContext
    from adapters.providers.registry import factory

    results: list[Check] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client:
        context = ProviderContext(settings, client, MediaLinks(b"doctor", settings.public_url))
        for name in settings.configured_providers:
            variable = env_name(PROVIDER_KEY_FIELDS[name])
            try:
                provider = factory(name)(context)
            except ConfigurationError as exc:
                results.append(Check(False, f"provider {name}: {exc.message}"))
                continue
            try:
                check = await provider.check_key()
            except Exception as exc:
                results.append(Check(False, f"provider {name}: the check failed ({exc})", False))
                continue
            finally:
                await provider.close()
            if not check.ok:
                said = check.detail
                if variable not in said:
                    said = f"{variable} is not accepted — {said}"
                results.append(Check(False, f"provider {name}: {said}"))
            else:
                hooks = "webhooks usable" if check.webhooks else "polled (no webhooks)"
                results.append(
                    Check(True, f"provider {name}: key accepted ({check.detail}); {hooks}", False)
                )
            if not provider.capabilities.price_known:
                results.append(
                    Check(True, f"provider {name}: {PRICE_UNKNOWN} (set R2V_PRICES)", False)
                )
    return results


async def run_doctor(settings: Settings, out: Callable[[str], None] = print) -> int:
    results = await checks(settings)
    for check in results:
        out(f"{'✓' if check.ok else '✗'} {check.text}")
    failed = [c for c in results if c.essential and not c.ok]
    if failed:
        out(f"{len(failed)} problem(s) found.")
        return 1
    out("All good.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from bot.settings import load_settings

    sys.exit(asyncio.run(run_doctor(load_settings())))
