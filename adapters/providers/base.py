"""What every hosted provider client shares, written once: the context it is built from, HTTP
calls with retries, reading errors, mapping states, staging media and downloading results.

Retry rules (PROVIDERS.md): only an answered 429 or 5xx is retried, with exponential backoff and
jitter (``Retry-After`` honoured, capped). A submit whose request may have reached the provider
(a timeout, a connection cut mid-way) is never sent again: the task may exist and be billed, so
the job fails with a reason instead. A connection that was never made is safe to retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.http.media import MediaLinks
from adapters.local_files import local_file
from adapters.providers.download import stream_download
from bot.errors import ConfigurationError, ProviderError
from bot.models import MediaKind
from bot.ports import (
    BEFORE_BILLABLE_REQUEST,
    Capabilities,
    KeyCheck,
    LabelStyle,
    Metrics,
    NoMetrics,
    PriceTable,
    ProviderRequest,
    StagedReference,
    TaskState,
    TaskStatus,
)
from bot.settings import PROVIDER_KEY_FIELDS, Settings, env_name

log = logging.getLogger(__name__)

#: Words in a provider's error that mean its content filter refused the request.
_CONTENT_WORDS = (
    "moderation",
    "sensitive",
    "inappropriate",
    "content policy",
    "safety",
    "nsfw",
    "datainspectionfailed",
    "content_policy",
    "flagged",
)


#: How each provider is named in what people read ("SEGMIND_API_KEY is rejected by Segmind").
PROVIDER_TITLES: Mapping[str, str] = {
    "dashscope": "DashScope",
    "wavespeed": "WaveSpeed",
    "freepik": "Freepik",
    "fal": "fal",
    "replicate": "Replicate",
    "inference": "inference.sh",
    "segmind": "Segmind",
    "together": "Together AI",
    "atlascloud": "AtlasCloud",
}


@dataclass(frozen=True)
class ProviderContext:
    """What the composition root hands every provider client."""

    settings: Settings
    client: httpx.AsyncClient
    links: MediaLinks
    metrics: Metrics = field(default_factory=NoMetrics)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def key(self, provider: str) -> str:
        secret = self.settings.provider_key(provider)
        if secret is None:
            raise ConfigurationError(f"{env_name(PROVIDER_KEY_FIELDS[provider])} is not set.")
        return secret.get_secret_value()

    def base_url(self, provider: str, default: str) -> str:
        value = getattr(self.settings, f"{provider}_base_url", None)
        return str(value or default).rstrip("/")

    def label_style(self, provider: str, default: LabelStyle) -> LabelStyle:
        value = getattr(self.settings, f"{provider}_labels", None)
        return value if isinstance(value, LabelStyle) else default

    def prices(self, provider: str, default: PriceTable) -> PriceTable:
        """The provider's price table, with per-second rates from ``R2V_PRICES`` when given."""
        override = self.settings.prices.get(provider)
        if not override:
            return default
        return PriceTable(
            per_second={**default.per_second, **override},
            by_duration={},
            bills_reference_video=default.bills_reference_video,
        )


def error_message(response: httpx.Response) -> str:
    """The provider's own words for an error, from the usual JSON shapes, else the text."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:300].strip() or f"HTTP {response.status_code}"
    for candidate in (body, body.get("data") if isinstance(body, dict) else None):
        if not isinstance(candidate, dict):
            continue
        for key in ("message", "error", "detail", "msg", "error_message"):
            value = candidate.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg")
            if isinstance(value, str) and value.strip():
                code = candidate.get("code")
                return f"{value.strip()}" + (f" ({code})" if isinstance(code, str) else "")
    return str(body)[:300]


def is_content_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _CONTENT_WORDS)


def content_refused(provider: str, detail: str) -> ProviderError:
    return ProviderError(
        f"{provider} refused the prompt or the references under its content rules ({detail}). "
        "Change the prompt or the pictures and try again.",
        code="content_refused",
    )


class Api:
    """One provider's HTTP API: base URL, auth headers, and the retry rules, written once."""

    def __init__(
        self,
        provider: str,
        context: ProviderContext,
        base_url: str,
        headers: Mapping[str, str],
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        max_wait: float = 20.0,
        key_hint: Callable[[], str] | None = None,
    ) -> None:
        """``key_hint`` adds what to check when the key is rejected (DashScope: its region)."""
        self.provider = provider
        self._key_hint = key_hint
        self._context = context
        self.client = context.client
        self.base_url = base_url
        self._headers = dict(headers)
        self._attempts = attempts
        self._backoff = backoff
        self._max_wait = max_wait

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}{path_or_url}"

    async def call(
        self,
        method: str,
        path_or_url: str,
        *,
        submit: bool = False,
        ok: tuple[int, ...] = (),
        bare: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying answered 429/5xx; raise ``ProviderError`` for failures.

        ``submit`` marks a request that creates (and bills) a task: it is never re-sent once it
        may have reached the provider. ``ok`` lists extra statuses the caller handles itself.
        ``bare`` leaves out our auth headers (a pre-signed storage URL is its own permission).
        """
        url = self.url(path_or_url)
        headers = {**({} if bare else self._headers), **kwargs.pop("headers", {})}
        if submit:
            announce = BEFORE_BILLABLE_REQUEST.get()
            if announce is not None:
                await announce()
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self.client.request(method, url, headers=headers, **kwargs)
            except httpx.ConnectError as exc:
                if attempt == self._attempts:
                    raise self._unreachable(exc) from exc
                await self._wait(attempt, None)
                continue
            except httpx.TransportError as exc:
                if submit:
                    raise ProviderError(
                        f"{self.provider} did not answer the request to start the video "
                        f"({type(exc).__name__}). It may have started it anyway, so it was not "
                        "sent again; check your provider dashboard before trying again.",
                        code="submit_unknown",
                    ) from exc
                if attempt == self._attempts:
                    raise self._unreachable(exc) from exc
                await self._wait(attempt, None)
                continue
            status = response.status_code
            if response.is_success or status in ok:
                return response
            if (status == 429 or status >= 500) and attempt < self._attempts:
                await self._wait(attempt, response.headers.get("retry-after"))
                continue
            raise self.failure(response, keyed=not bare)
        raise AssertionError("unreachable")  # pragma: no cover

    async def json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        submit = bool(kwargs.get("submit"))
        response = await self.call(method, path_or_url, **kwargs)
        try:
            return response.json()
        except ValueError:
            if submit:  # it said yes to something: the task may exist, so never move on
                raise ProviderError(
                    f"{self.provider} accepted the request to start the video but its answer "
                    f"could not be read (HTTP {response.status_code}); it was not sent again. "
                    "Check your provider dashboard before trying again.",
                    code="submit_unknown",
                ) from None
            raise ProviderError(
                f"{self.provider} answered something that is not JSON "
                f"(HTTP {response.status_code}).",
                code="provider_error",
                retryable=True,
            ) from None

    async def _wait(self, attempt: int, retry_after: str | None) -> None:
        self._context.metrics.retried(self.provider)
        delay = self._backoff * 2 ** (attempt - 1)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        delay = min(delay, self._max_wait) * random.uniform(0.8, 1.2)
        log.info("%s: retrying in %.1f s (attempt %d)", self.provider, delay, attempt + 1)
        await self._context.sleep(delay)

    def _unreachable(self, exc: Exception) -> ProviderError:
        return ProviderError(
            f"{self.provider} could not be reached ({type(exc).__name__}); it will be tried again.",
            code="provider_unavailable",
            retryable=True,
        )

    def failure(self, response: httpx.Response, *, keyed: bool = True) -> ProviderError:
        """A ``ProviderError`` for an answer that is not a success, sorted by what it means.

        A 401/403 to a request that carried our key is that key rejected; to a pre-signed
        storage link (``keyed`` false) it is the link, not the key."""
        status = response.status_code
        detail = error_message(response)
        if status in (401, 403) and keyed:
            title = PROVIDER_TITLES.get(self.provider, self.provider)
            hint = f" {self._key_hint()}" if self._key_hint else ""
            return ProviderError(
                f"{self._key_env()} is rejected by {title} (HTTP {status}: {detail}).{hint} "
                "The bot's operator must fix the key and restart the bot.",
                code="configuration_error",
                auth=True,
            )
        if status == 429:
            return ProviderError(
                f"{self.provider} is busy (rate limit reached); tried {self._attempts} times.",
                code="provider_busy",
                retryable=True,
            )
        if status >= 500:
            return ProviderError(
                f"{self.provider} is out of service for now (HTTP {status}); "
                f"tried {self._attempts} times.",
                code="provider_unavailable",
                retryable=True,
            )
        if is_content_refusal(detail):
            return content_refused(self.provider, detail)
        return ProviderError(
            f"{self.provider} refused the request (HTTP {status}: {detail}).",
            code="provider_refused",
        )

    def _key_env(self) -> str:
        field_name = PROVIDER_KEY_FIELDS.get(self.provider)
        return env_name(field_name) if field_name else "its key"


#: The (provider, status) pairs already logged as unknown: each is logged once, not every poll.
_UNKNOWN_LOGGED: set[tuple[str, str]] = set()


def map_state(provider: str, raw: object, table: Mapping[str, TaskState]) -> TaskState:
    """A provider's status word (or number) as one of our task states.

    An unknown one is logged once with its raw value and treated as pending: the job keeps
    polling until its timeout, whose reason then names the last status seen (``TaskStatus.raw``).
    """
    key = str(raw).strip().lower()
    state = table.get(key)
    if state is None:
        if (provider, key) not in _UNKNOWN_LOGGED:
            _UNKNOWN_LOGGED.add((provider, key))
            log.warning("%s: unknown task status %r, treated as pending", provider, raw)
        return TaskState.PENDING
    return state


def task_id_with_urls(request_id: str, urls: Mapping[str, str]) -> str:
    """A task id that keeps the URLs a submit answered (status, result…): only the task id is
    stored with a job, and these providers ask that their URLs be used as given."""
    return json.dumps({"id": request_id, **urls}, separators=(",", ":"))


def urls_in_task_id(task_id: str) -> tuple[str, dict[str, str]]:
    """The request id and the URLs ``task_id_with_urls`` kept (none for a bare request id)."""
    try:
        data: Any = json.loads(task_id)
    except ValueError:
        return task_id, {}
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return task_id, {}
    urls = {k: v for k, v in data.items() if k != "id" and isinstance(v, str) and v}
    return data["id"], urls


@dataclass
class StagedRequest:
    """A request's references as the provider will fetch them: URLs by kind, in slot order, and
    (label, URL) of each voice."""

    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    voices: list[tuple[str, str]] = field(default_factory=list)


class FileBody:
    """A file as a request body: read from disk a chunk at a time, and sendable again (each
    iteration opens the file anew), so a retried upload starts from its first byte."""

    def __init__(self, path: Path) -> None:
        self._file = local_file(path)
        self.size = self._file.declared_size or 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._file.open().__aiter__()


class HostedProvider:
    """The parts of a hosted provider client that are the same for all of them.

    Subclasses set ``name`` and build ``capabilities`` and ``api`` in ``__init__``; they implement
    ``submit`` and ``status``, and override ``stage_file`` (upload APIs), ``check_webhook``
    (signed webhooks), ``cancel`` and ``start`` where the provider has them.
    """

    name: str = "hosted"

    def __init__(self, context: ProviderContext, capabilities: Capabilities, api: Api) -> None:
        self.context = context
        # Reference video is billed by the second: send what R2V_MAX_REFERENCE_SECONDS allows.
        self._capabilities = replace(
            capabilities, max_reference_seconds=context.settings.max_reference_seconds
        )
        self.api = api

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_key(self) -> KeyCheck:
        raise NotImplementedError

    async def cancel(self, task_id: str) -> bool:
        return False

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Providers that do not sign webhooks rely on the per-job URL token (checked by the
        engine) and the status look-up that follows every webhook."""
        return None

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """A URL the provider can fetch the file from: by default our signed ``/media`` link
        (or the object store's presigned link, when blobs live in one)."""
        url = await self.context.links.fetch_url(blob, mime)
        if url is None:
            raise ProviderError(
                f"{self.name} fetches references by URL, and this bot has no public address: "
                "set R2V_PUBLIC_URL.",
                code="configuration_error",
            )
        return url

    async def stage_all(self, request: ProviderRequest) -> StagedRequest:
        """Every reference staged, split by kind in slot order, with the voices riding along."""
        staged = StagedRequest()
        for reference in request.references:
            url, voice = await self.stage(reference)
            (staged.videos if reference.kind is MediaKind.VIDEO else staged.images).append(url)
            if voice is not None:
                staged.voices.append((reference.label, voice))
        return staged

    async def stage(self, reference: StagedReference) -> tuple[str, str | None]:
        """URLs for a reference and for the voice riding with it."""
        url = await self.stage_file(reference.blob, str(reference.path), reference.mime)
        voice = None
        if reference.voice_path is not None and reference.voice_blob and reference.voice_mime:
            voice = await self.stage_file(
                reference.voice_blob, str(reference.voice_path), reference.voice_mime
            )
        return url, voice

    async def put_file(
        self,
        url: str,
        path: Path,
        mime: str,
        *,
        method: str = "PUT",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a file to a pre-signed storage URL: streamed from disk with its length declared
        (signed URLs refuse chunked bodies), without our key, retried like every call."""
        body = await asyncio.to_thread(FileBody, path)
        sent = {"Content-Type": mime, **(headers or {}), "Content-Length": str(body.size)}
        return await self.api.call(method, url, content=body, headers=sent, bare=True)

    def download(self, status: TaskStatus) -> AsyncIterator[bytes]:
        if not status.result_url:
            raise ProviderError(
                f"{self.name} reported success without a video link.", code="result_missing"
            )
        return stream_download(
            self.context.client,
            status.result_url,
            max_bytes=self.context.settings.max_result_bytes,
        )

    def webhook_secret_missing(self) -> ProviderError:
        return ProviderError(
            f"{self.name}'s webhook signing secret is unknown, so its webhooks cannot be checked.",
            code="webhook_secret_missing",
        )
