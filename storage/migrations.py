"""The schema, as versioned migrations for each database.

Migration N is ``…_MIGRATIONS[N - 1]``; both lists have the same length and the same meaning per
version, so ``r2v db status`` reads alike on either. A migration runs in one transaction with its
version bump: a failed one leaves the database as it was. Never edit a released migration; add one.
"""

from __future__ import annotations

from storage.sql import UNFINISHED_STATES

_JOB_STATES = "('queued', 'submitted', 'running', 'delivering', 'delivered', 'failed', 'cancelled')"


def _v1(*, real: str, serial_key: str) -> str:
    """Servers, characters and their media, jobs with their events and blobs."""
    return f"""
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{{}}',
        created_at {real} NOT NULL
    );
    CREATE TABLE characters (
        id {serial_key},
        server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
        created_at {real},
        updated_at {real},
        UNIQUE (server_id, name_key)
    );
    CREATE TABLE character_media (
        id {serial_key},
        character_id BIGINT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'video', 'voice')),
        position INTEGER NOT NULL,
        blob TEXT NOT NULL,
        mime TEXT NOT NULL,
        size BIGINT NOT NULL,
        width INTEGER,
        height INTEGER,
        duration {real},
        created_at {real}
    );
    CREATE INDEX character_media_character ON character_media (character_id, position);
    CREATE INDEX character_media_blob ON character_media (blob);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        server_id TEXT NOT NULL REFERENCES servers(id),
        user_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN {_JOB_STATES}),
        spec TEXT NOT NULL,
        platform TEXT NOT NULL,
        dest_server_id TEXT NOT NULL,
        dest_user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        thread_id TEXT,
        status_message_id TEXT,
        task_id TEXT,
        token_hash TEXT,
        reason TEXT,
        progress {real},
        result_blob TEXT,
        result_size BIGINT,
        result_duration {real},
        cost_estimate {real},
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        submitted_at {real},
        finished_at {real},
        next_poll_at {real},
        poll_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE state IN {UNFINISHED_STATES};
    CREATE INDEX jobs_by_user ON jobs (server_id, user_id, created_at);
    CREATE TABLE job_events (
        id {serial_key},
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        at {real} NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_events_job ON job_events (job_id);
    CREATE TABLE job_blobs (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        blob TEXT NOT NULL,
        role TEXT NOT NULL,
        PRIMARY KEY (job_id, blob, role)
    );
    CREATE INDEX job_blobs_blob ON job_blobs (blob);
    """


def _v2(*, real: str) -> str:
    """Several instances: a job's lease (which instance drives it, until when) and the attempts
    at its two side effects that must not be repeated blindly after a crash (submitting to a
    paid provider, posting the video)."""
    return f"""
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires {real};
    ALTER TABLE jobs ADD COLUMN submit_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_lease ON jobs (lease_owner) WHERE state IN {UNFINISHED_STATES};
    """


def _v3(*, real: str) -> str:
    """People's names as their platform last gave them, for pages outside chat (the gallery)
    where a platform id means nothing to a reader."""
    return f"""
    CREATE TABLE people (
        server_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        display_name TEXT NOT NULL,
        updated_at {real} NOT NULL,
        PRIMARY KEY (server_id, user_id)
    );
    """


def _v4(*, real: str) -> str:
    """Blobs of an object store waiting to be removed. Several instances share the bucket, so
    one may store content again (and soon refer to it) just as another finds it unused: a blob is
    first put here, and removed from the bucket only after a grace period, if still unused and
    not taken back by a store of the same content meanwhile."""
    return f"""
    CREATE TABLE blob_trash (
        blob TEXT PRIMARY KEY,
        since {real} NOT NULL
    );
    CREATE INDEX blob_trash_since ON blob_trash (since);
    """


SQLITE_MIGRATIONS: tuple[str, ...] = (
    _v1(real="REAL", serial_key="INTEGER PRIMARY KEY"),
    _v2(real="REAL"),
    _v3(real="REAL"),
    _v4(real="REAL"),
)

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    _v1(real="DOUBLE PRECISION", serial_key="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    _v2(real="DOUBLE PRECISION"),
    _v3(real="DOUBLE PRECISION"),
    _v4(real="DOUBLE PRECISION"),
)
