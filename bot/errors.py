"""The bot's one small exception hierarchy.

Every error raised on purpose carries a stable snake_case ``code`` (the console's ``--json`` events
and the chat adapters show it) and a message written for the person who has to act on it: what was
wrong, and what would be accepted instead.
"""

from __future__ import annotations


class R2VError(Exception):
    """Base of every error the bot raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Refusal(R2VError):
    """A command refused before anything was stored: the user can fix it and try again."""

    code = "refused"


class InvalidMedia(Refusal):
    """A file whose content is not an accepted image, video or voice clip, or is out of limits."""

    code = "invalid_media"


class ProviderCannotTake(Refusal):
    """No provider this request may go to accepts its references or options (a kind it needs,
    or more of one than it takes): refused before anything is sent or paid for."""

    code = "provider_cannot_take"


class ConfigurationError(R2VError):
    """The bot's own set-up is wrong (a setting, a key); a server admin has to fix it."""

    code = "configuration_error"


class ProviderError(R2VError):
    """A provider failed or refused a request.

    ``retryable`` says whether the same request may succeed later (capacity, server errors);
    ``auth`` marks a rejected key, which is a configuration problem and never triggers failover.
    """

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        auth: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.auth = auth


class WebhookRejected(R2VError):
    """A webhook whose token, signature or timestamp does not check out."""

    code = "webhook_rejected"


class StorageUnavailable(R2VError):
    """The database or the blob store cannot be reached or written right now (disk full,
    read-only files, a lost connection, a bucket that is down). Transient: jobs keep their state
    and retry; a command that needs the failing part is refused with this code."""

    code = "storage_unavailable"


class LeaseLost(R2VError):
    """This instance no longer holds the job's lease (another instance took it over): stop
    touching the job. Raised by every fenced job write."""

    code = "lease_lost"
