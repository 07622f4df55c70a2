"""Per-server settings that bound spending, and the checks made before a job is accepted.

Admins set a daily budget in USD, a per-user daily job count, the providers allowed and the
server's default provider (``/settings``). Days are UTC days; a refused job says when they reset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.errors import Refusal
from bot.status import elapsed


@dataclass(frozen=True, slots=True)
class ServerSettings:
    daily_budget_usd: float | None = None
    user_daily_jobs: int | None = None
    allowed_providers: tuple[str, ...] = ()
    default_provider: str | None = None
    #: Discord generation channels (empty: any channel).
    channels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "daily_budget_usd": self.daily_budget_usd,
            "user_daily_jobs": self.user_daily_jobs,
            "allowed_providers": list(self.allowed_providers),
            "default_provider": self.default_provider,
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSettings:
        budget = data.get("daily_budget_usd")
        jobs = data.get("user_daily_jobs")
        return cls(
            daily_budget_usd=float(budget) if budget is not None else None,
            user_daily_jobs=int(jobs) if jobs is not None else None,
            allowed_providers=tuple(data.get("allowed_providers") or ()),
            default_provider=data.get("default_provider"),
            channels=tuple(data.get("channels") or ()),
        )

    def allows(self, provider: str) -> bool:
        return not self.allowed_providers or provider in self.allowed_providers

    def describe(self) -> str:
        budget = (
            f"${self.daily_budget_usd:.2f} a day"
            if self.daily_budget_usd is not None
            else ("no limit")
        )
        jobs = f"{self.user_daily_jobs} a day" if self.user_daily_jobs is not None else "no limit"
        allowed = ", ".join(self.allowed_providers) or "all that are set up"
        return "\n".join(
            [
                f"  budget: {budget}",
                f"  jobs per user: {jobs}",
                f"  providers: {allowed}",
                f"  default provider: {self.default_provider or 'the bot’s default'}",
            ]
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """Today's jobs (those not refused before reaching a provider) and their estimated cost."""

    jobs_by_user: Mapping[str, int] = field(default_factory=dict)
    spend_usd: float = 0.0

    @property
    def jobs(self) -> int:
        return sum(self.jobs_by_user.values())


@dataclass(frozen=True, slots=True)
class Admission:
    """The quota check a new job passes in the transaction that writes it, against the usage
    counted there since ``since``: instances admitting jobs at once cannot both spend the last
    of a budget. ``check`` raises the refusal."""

    since: float
    check: Callable[[Usage], None]


def day_start(now: float) -> float:
    """The start of the UTC day ``now`` falls in."""
    moment = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def resets_in(now: float) -> str:
    return f"resets at 00:00 UTC, in {elapsed(day_start(now) + 86400 - now)}"


def check_quota(
    settings: ServerSettings, usage: Usage, user_id: str, estimate: float | None, now: float
) -> None:
    """Refuse with ``quota_exceeded`` when the user's count or the server's budget is spent."""
    if settings.user_daily_jobs is not None:
        mine = usage.jobs_by_user.get(user_id, 0)
        if mine >= settings.user_daily_jobs:
            raise Refusal(
                f"You have made {mine} of your {settings.user_daily_jobs} videos today; the "
                f"count {resets_in(now)}.",
                code="quota_exceeded",
            )
    budget = settings.daily_budget_usd
    if budget is not None and estimate and usage.spend_usd + estimate > budget + 1e-9:
        left = max(0.0, budget - usage.spend_usd)
        raise Refusal(
            f"This video would cost about ${estimate:.2f}, and the server has ${left:.2f} "
            f"left of its ${budget:.2f} daily budget; the budget {resets_in(now)}.",
            code="quota_exceeded",
        )


def apply_changes(
    current: ServerSettings, changes: Mapping[str, Any], known_providers: Sequence[str]
) -> ServerSettings:
    """The settings after ``/settings`` changes; ``none`` clears a value."""
    updated = current
    if "budget" in changes:
        value = str(changes["budget"]).strip().lower().lstrip("$")
        updated = replace(
            updated,
            daily_budget_usd=None
            if value == "none"
            else _number(value, "budget", "an amount in USD such as 5 or 2.50"),
        )
    if "user_jobs" in changes:
        value = str(changes["user_jobs"]).strip().lower()
        count = None if value == "none" else int(_number(value, "user_jobs", "a whole number"))
        updated = replace(updated, user_daily_jobs=count)
    if "providers" in changes:
        value = str(changes["providers"]).strip().lower()
        names = (
            ()
            if value in {"all", "none", ""}
            else tuple(p.strip() for p in value.split(",") if p.strip())
        )
        _known(names, known_providers)
        updated = replace(updated, allowed_providers=names)
    if "default_provider" in changes:
        value = str(changes["default_provider"]).strip().lower()
        name = None if value == "none" else value
        if name is not None:
            _known((name,), known_providers)
        updated = replace(updated, default_provider=name)
    if updated.default_provider and not updated.allows(updated.default_provider):
        raise Refusal(
            f"The default provider {updated.default_provider} is not among the allowed ones "
            f"({', '.join(updated.allowed_providers)}).",
            code="invalid_option",
        )
    return updated


def _number(value: str, option: str, accepted: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise Refusal(
            f"{option}:{value} is not accepted: use {accepted}, or none.", code="invalid_option"
        ) from None
    if number < 0:
        raise Refusal(f"{option} cannot be negative.", code="invalid_option")
    return number


def _known(names: Sequence[str], known: Sequence[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Refusal(
            f"Unknown provider(s): {', '.join(unknown)}. Set up on this bot: {', '.join(known)}.",
            code="invalid_option",
        )
