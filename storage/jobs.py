"""Jobs, their state history and the blobs they hold on to, in SQLite.

A job only moves forward (``JobState.can_move_to``). The check and the write happen in one
transaction, so when a webhook and a poll report the same change at once, exactly one of them
moves the job and the other is told ``None``: it must not repeat the side effect.

The spec is stored as JSON through the explicit ``spec_to_dict`` / ``spec_from_dict`` below, so a
renamed dataclass field fails loudly here instead of producing rows that no longer load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bot.errors import LeaseLost
from bot.models import (
    Claim,
    Destination,
    Job,
    JobReference,
    JobSpec,
    JobState,
    MediaKind,
    OpenJob,
)
from bot.quotas import Admission, Usage
from storage.sql import UNFINISHED_CONDITION, Row, SqlDatabase, Tx

#: Job fields ``move`` and ``update`` may set, as named on ``Job``/``Destination`` and in the
#: table alike. ``state`` changes through ``move`` only; ids, spec and creation time never change.
UPDATABLE_FIELDS = frozenset(
    {
        "provider",
        "task_id",
        "token_hash",
        "reason",
        "progress",
        "result_blob",
        "result_size",
        "result_duration",
        "cost_estimate",
        "submitted_at",
        "finished_at",
        "next_poll_at",
        "poll_count",
        "thread_id",
        "status_message_id",
        "submit_attempts",
        "delivery_attempts",
    }
)

#: The advisory lock that serialises admission (the counting of open jobs) on PostgreSQL;
#: SQLite's ``BEGIN IMMEDIATE`` already serialises every write transaction.
ADMISSION_LOCK = 7_202_611_002

#: A job that holds a slot: started at a provider, or queued but taken by a live instance.
_ACTIVE = (
    "(state IN ('submitted', 'running', 'delivering')"
    " OR (state = 'queued' AND lease_owner IS NOT NULL AND lease_expires >= ?))"
)

_INSERT_COLUMNS = (
    "id",
    "server_id",
    "user_id",
    "provider",
    "state",
    "spec",
    "platform",
    "dest_server_id",
    "dest_user_id",
    "channel_id",
    "thread_id",
    "status_message_id",
    "task_id",
    "token_hash",
    "reason",
    "progress",
    "result_blob",
    "result_size",
    "result_duration",
    "cost_estimate",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "next_poll_at",
    "poll_count",
    "submit_attempts",
    "delivery_attempts",
)

Event = tuple[float, str | None, str, str]


def reference_to_dict(ref: JobReference) -> dict[str, Any]:
    return {
        "label": ref.label,
        "kind": ref.kind.value,
        "blob": ref.blob,
        "mime": ref.mime,
        "source": ref.source,
        "voice_blob": ref.voice_blob,
        "voice_mime": ref.voice_mime,
        "duration": ref.duration,
    }


def reference_from_dict(data: Mapping[str, Any]) -> JobReference:
    return JobReference(
        label=data["label"],
        kind=MediaKind(data["kind"]),
        blob=data["blob"],
        mime=data["mime"],
        source=data["source"],
        voice_blob=data.get("voice_blob"),
        voice_mime=data.get("voice_mime"),
        duration=data.get("duration"),
    )


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return {
        "prompt": spec.prompt,
        "original_prompt": spec.original_prompt,
        "references": [reference_to_dict(ref) for ref in spec.references],
        "duration": spec.duration,
        "resolution": spec.resolution,
        "aspect_ratio": spec.aspect_ratio,
        "seed": spec.seed,
        "negative_prompt": spec.negative_prompt,
        "template": spec.template,
        "fallbacks": list(spec.fallbacks),
    }


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec:
    return JobSpec(
        prompt=data["prompt"],
        original_prompt=data["original_prompt"],
        references=tuple(reference_from_dict(ref) for ref in data["references"]),
        duration=data["duration"],
        resolution=data["resolution"],
        aspect_ratio=data["aspect_ratio"],
        seed=data.get("seed"),
        negative_prompt=data.get("negative_prompt", ""),
        template=data.get("template", ""),
        fallbacks=tuple(data.get("fallbacks", ())),
    )


def _job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        server_id=row["server_id"],
        user_id=row["user_id"],
        provider=row["provider"],
        state=JobState(row["state"]),
        spec=spec_from_dict(json.loads(row["spec"])),
        destination=Destination(
            platform=row["platform"],
            server_id=row["dest_server_id"],
            channel_id=row["channel_id"],
            user_id=row["dest_user_id"],
            thread_id=row["thread_id"],
            status_message_id=row["status_message_id"],
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        task_id=row["task_id"],
        token_hash=row["token_hash"],
        reason=row["reason"],
        progress=row["progress"],
        result_blob=row["result_blob"],
        result_size=row["result_size"],
        result_duration=row["result_duration"],
        submitted_at=row["submitted_at"],
        finished_at=row["finished_at"],
        next_poll_at=row["next_poll_at"],
        poll_count=row["poll_count"],
        cost_estimate=row["cost_estimate"],
        submit_attempts=row["submit_attempts"],
        delivery_attempts=row["delivery_attempts"],
    )


def _job_values(job: Job) -> tuple[object, ...]:
    dest = job.destination
    spec = json.dumps(spec_to_dict(job.spec), ensure_ascii=False, separators=(",", ":"))
    return (
        job.id,
        job.server_id,
        job.user_id,
        job.provider,
        job.state.value,
        spec,
        dest.platform,
        dest.server_id,
        dest.user_id,
        dest.channel_id,
        dest.thread_id,
        dest.status_message_id,
        job.task_id,
        job.token_hash,
        job.reason,
        job.progress,
        job.result_blob,
        job.result_size,
        job.result_duration,
        job.cost_estimate,
        job.created_at,
        job.updated_at,
        job.submitted_at,
        job.finished_at,
        job.next_poll_at,
        job.poll_count,
        job.submit_attempts,
        job.delivery_attempts,
    )


def _checked_fields(fields: Mapping[str, object]) -> dict[str, object]:
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(
            f"cannot set job field(s) {', '.join(unknown)}; "
            f"settable: {', '.join(sorted(UPDATABLE_FIELDS))} (state changes through move)"
        )
    return dict(fields)


def _assignments(values: Mapping[str, object]) -> str:
    # lease_owner/lease_expires are set here by the store itself, never by callers.
    # Column names come from UPDATABLE_FIELDS or this module, never from outside.
    return ", ".join(f"{column} = ?" for column in values)


async def _usage(reader: Tx | SqlDatabase, server_id: str, since: float) -> Usage:
    rows = await reader.fetchall(
        "SELECT user_id, COUNT(*) AS jobs, COALESCE(SUM(cost_estimate), 0) AS spend"
        " FROM jobs WHERE server_id = ? AND created_at >= ?"
        " AND NOT (state IN ('failed', 'cancelled') AND task_id IS NULL)"
        " GROUP BY user_id",
        (server_id, since),
    )
    return Usage(
        jobs_by_user={row["user_id"]: int(row["jobs"]) for row in rows},
        spend_usd=round(sum(float(row["spend"]) for row in rows), 4),
    )


def _open_job(row: Row) -> OpenJob:
    return OpenJob(
        row["id"], row["server_id"], row["user_id"], JobState(row["state"]), row["platform"]
    )


class SqlJobStore:
    """``JobStore`` over SQLite or PostgreSQL. A job's server must exist (``ensure_server``).

    Leases: an instance drives a job only while it holds the job's lease (``lease_owner``,
    ``lease_expires``). Writes given ``lease=`` are fenced: they change nothing and raise
    ``LeaseLost`` unless that instance still holds an unexpired lease on the job.
    """

    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self, job: Job, blobs: Sequence[str], *, admit: Admission | None = None
    ) -> None:
        """Write a new ``queued`` job, its server (when new), its first event, and the blobs it
        refers to (role ``reference``), in one transaction.

        ``admit`` (the quota check) runs inside that transaction on the usage counted there,
        under the admission lock, so two instances cannot both take the last of a budget."""
        if job.state is not JobState.QUEUED:
            raise ValueError(f"a new job starts queued, not {job.state.value}")
        placeholders = ", ".join("?" for _ in _INSERT_COLUMNS)
        async with self._db.transaction() as tx:
            if admit is not None:
                await self._lock_admission(tx)
                admit.check(await _usage(tx, job.server_id, admit.since))
            await tx.execute(
                "INSERT INTO servers (id, platform, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (job.server_id, job.destination.platform, job.created_at),
            )
            await tx.execute(
                f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES ({placeholders})",
                _job_values(job),
            )
            await tx.execute(
                "INSERT INTO job_events (job_id, at, from_state, to_state) VALUES (?, ?, NULL, ?)",
                (job.id, job.created_at, job.state.value),
            )
            await tx.executemany(
                "INSERT INTO job_blobs (job_id, blob, role) VALUES (?, ?, 'reference')"
                " ON CONFLICT DO NOTHING",
                [(job.id, blob) for blob in dict.fromkeys(blobs)],
            )

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(row) if row else None

    async def _locked(self, tx: Tx, job_id: str, lease: str | None, now: float) -> Row | None:
        """The job's row, locked for this transaction; fenced when ``lease`` is given."""
        row = await tx.fetchone(
            "SELECT state, lease_owner, lease_expires FROM jobs WHERE id = ? FOR UPDATE",
            (job_id,),
        )
        if row is not None and lease is not None:
            expires = row["lease_expires"]
            if row["lease_owner"] != lease or expires is None or expires < now:
                raise LeaseLost(f"this instance no longer holds job {job_id}")
        return row

    async def move(
        self,
        job_id: str,
        new: JobState,
        *,
        detail: str = "",
        lease: str | None = None,
        **fields: object,
    ) -> Job | None:
        """Move a job forward, set ``fields`` and record the event, in one transaction.

        Answers the updated job, or ``None`` (changing nothing) when the job is unknown or the
        move is not forward from its stored state. ``finished_at`` is set on reaching a final
        state (which also ends the lease) and ``submitted_at`` on reaching ``submitted``,
        unless ``fields`` give them.
        """
        values = _checked_fields(fields)
        async with self._db.transaction() as tx:
            now = self._clock()
            row = await self._locked(tx, job_id, lease, now)
            if row is None:
                return None
            old = JobState(row["state"])
            if not old.can_move_to(new):
                return None
            if new.is_final:
                values.setdefault("finished_at", now)
                values.update(lease_owner=None, lease_expires=None)
            if new is JobState.SUBMITTED:
                values.setdefault("submitted_at", now)
            values.update(state=new.value, updated_at=now)
            await tx.execute(
                f"UPDATE jobs SET {_assignments(values)} WHERE id = ?", (*values.values(), job_id)
            )
            await tx.execute(
                "INSERT INTO job_events (job_id, at, from_state, to_state, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, now, old.value, new.value, detail),
            )
            updated = await tx.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(updated) if updated else None

    async def update(self, job_id: str, *, lease: str | None = None, **fields: object) -> Job:
        """Set fields other than the state (progress, poll schedule, task and message ids…)."""
        values = _checked_fields(fields)
        async with self._db.transaction() as tx:
            now = self._clock()
            if await self._locked(tx, job_id, lease, now) is None:
                raise LookupError(f"no job with id {job_id}")
            values["updated_at"] = now
            await tx.execute(
                f"UPDATE jobs SET {_assignments(values)} WHERE id = ?", (*values.values(), job_id)
            )
            row = await tx.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        assert row is not None  # locked above, in this transaction
        return _job_from_row(row)

    # -- leases ------------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        lease_seconds: float,
        *,
        platforms: Sequence[str],
        user_open_jobs: int,
        server_open_jobs: int,
    ) -> Claim:
        """Take the lease of every unfinished job of ``platforms`` that nobody holds (or whose
        holder let it expire) and that may run: started jobs always (a take-over), queued ones
        while their user and server are under the open-job limits, in order of creation.

        The counting happens here, in the transaction that takes the leases, so the limits
        hold across every instance."""
        if not platforms:
            return Claim((), ())
        marks = ", ".join("?" for _ in platforms)
        async with self._db.transaction() as tx:
            now = self._clock()
            await self._lock_admission(tx)
            counts = await tx.fetchall(
                f"SELECT server_id, user_id, COUNT(*) AS n FROM jobs WHERE {_ACTIVE}"
                " GROUP BY server_id, user_id",
                (now,),
            )
            per_user = {(r["server_id"], r["user_id"]): int(r["n"]) for r in counts}
            per_server: dict[str, int] = {}
            for (server, _), n in per_user.items():
                per_server[server] = per_server.get(server, 0) + n
            rows = await tx.fetchall(
                "SELECT id, server_id, user_id, state, platform, lease_owner FROM jobs"
                f" WHERE {UNFINISHED_CONDITION} AND platform IN ({marks})"
                " AND (lease_owner IS NULL OR lease_expires < ? OR lease_owner = ?)"
                " ORDER BY created_at, id FOR UPDATE SKIP LOCKED",
                (*platforms, now, owner),
            )
            taken: list[OpenJob] = []
            waiting: list[OpenJob] = []
            for row in rows:
                job = _open_job(row)
                # Started jobs are taken over whatever the limits; so are queued jobs this
                # owner already holds (it restarted under the same id): they hold a slot.
                if job.state is not JobState.QUEUED or row["lease_owner"] == owner:
                    taken.append(job)
                    continue
                user = (job.server_id, job.user_id)
                if (
                    per_user.get(user, 0) < user_open_jobs
                    and per_server.get(job.server_id, 0) < server_open_jobs
                ):
                    per_user[user] = per_user.get(user, 0) + 1
                    per_server[job.server_id] = per_server.get(job.server_id, 0) + 1
                    taken.append(job)
                else:
                    waiting.append(job)
            await tx.executemany(
                "UPDATE jobs SET lease_owner = ?, lease_expires = ? WHERE id = ?",
                [(owner, now + lease_seconds, job.id) for job in taken],
            )
        return Claim(tuple(taken), tuple(waiting))

    async def renew(self, owner: str, lease_seconds: float) -> set[str]:
        """Extend every unexpired lease ``owner`` holds; answers the ids it still holds."""
        async with self._db.transaction() as tx:
            now = self._clock()
            rows = await tx.fetchall(
                "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND lease_expires >= ?"
                f" AND {UNFINISHED_CONDITION} RETURNING id",
                (now + lease_seconds, owner, now),
            )
        return {row["id"] for row in rows}

    async def release(self, owner: str, job_ids: Sequence[str] | None = None) -> int:
        """Give up ``owner``'s leases (all, or those of ``job_ids``) so another instance takes
        the jobs over at once; answers how many were released."""
        sql = "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?"
        params: list[object] = [owner]
        if job_ids is not None:
            if not job_ids:
                return 0
            sql += f" AND id IN ({', '.join('?' for _ in job_ids)})"
            params += job_ids
        outcome = await self._db.execute(sql, params)
        return outcome.rowcount

    async def forget_leases(self) -> int:
        """Drop every lease. Only for a database one process uses (SQLite, whose data folder
        is locked to one process): at its start, any lease left is a dead process's."""
        outcome = await self._db.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL"
        )
        return outcome.rowcount

    async def waiting(self, server_id: str) -> Sequence[str]:
        """The server's queued jobs that no live instance has taken, oldest first."""
        rows = await self._db.fetchall(
            "SELECT id FROM jobs WHERE server_id = ? AND state = 'queued'"
            " AND (lease_owner IS NULL OR lease_expires < ?) ORDER BY created_at, id",
            (server_id, self._clock()),
        )
        return [row["id"] for row in rows]

    async def active_count(self, server_id: str, user_id: str) -> tuple[int, int]:
        """How many slots the user and the whole server hold now (see ``claim``)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS server_n,"
            " COALESCE(SUM(CASE WHEN user_id = ? THEN 1 ELSE 0 END), 0) AS user_n"
            f" FROM jobs WHERE server_id = ? AND {_ACTIVE}",
            (user_id, server_id, self._clock()),
        )
        return (int(row["user_n"]), int(row["server_n"])) if row else (0, 0)

    # -- reading -----------------------------------------------------------------------------

    async def open_jobs(self) -> Sequence[OpenJob]:
        rows = await self._db.fetchall(
            "SELECT id, server_id, user_id, state, platform FROM jobs"
            f" WHERE {UNFINISHED_CONDITION} ORDER BY created_at, id"
        )
        return [_open_job(r) for r in rows]

    async def unfinished(self) -> Sequence[Job]:
        """Jobs not in a final state, oldest first."""
        rows = await self._db.fetchall(
            f"SELECT * FROM jobs WHERE {UNFINISHED_CONDITION} ORDER BY created_at, id"
        )
        return [_job_from_row(row) for row in rows]

    async def recent_for_user(self, server_id: str, user_id: str, limit: int) -> Sequence[Job]:
        """The user's latest jobs in the server, newest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM jobs WHERE server_id = ? AND user_id = ?"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (server_id, user_id, limit),
        )
        return [_job_from_row(row) for row in rows]

    async def usage(self, server_id: str, since: float) -> Usage:
        """Jobs created since ``since`` and their estimated cost, leaving out jobs that ended
        before any provider took them (refused, or cancelled while waiting): nothing was spent."""
        return await _usage(self._db, server_id, since)

    async def _lock_admission(self, tx: Tx) -> None:
        """Serialise admissions (counting, then writing) across instances. SQLite's
        ``BEGIN IMMEDIATE`` already serialises every write transaction."""
        if self._db.dialect == "postgresql":
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (ADMISSION_LOCK,))

    async def add_blob(self, job_id: str, blob: str, role: str) -> None:
        """Record that the job holds on to a blob (e.g. its ``result``); repeats are ignored."""
        await self._db.execute(
            "INSERT INTO job_blobs (job_id, blob, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (job_id, blob, role),
        )

    async def events(self, job_id: str) -> list[Event]:
        """The job's history, oldest first: (time, from state or None, to state, detail)."""
        rows = await self._db.fetchall(
            "SELECT at, from_state, to_state, detail FROM job_events WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [(row["at"], row["from_state"], row["to_state"], row["detail"]) for row in rows]

    async def delivered(self, server_id: str, limit: int) -> Sequence[Job]:
        """The server's delivered jobs that kept their video, newest first (the gallery)."""
        rows = await self._db.fetchall(
            "SELECT * FROM jobs WHERE server_id = ? AND state = 'delivered'"
            " AND result_blob IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT ?",
            (server_id, limit),
        )
        return [_job_from_row(row) for row in rows]

    async def delivered_result(self, server_id: str, blob: str) -> Job | None:
        """The server's latest delivered job whose video is ``blob`` (the gallery's files)."""
        row = await self._db.fetchone(
            "SELECT * FROM jobs WHERE server_id = ? AND state = 'delivered'"
            " AND result_blob = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (server_id, blob),
        )
        return _job_from_row(row) if row is not None else None
