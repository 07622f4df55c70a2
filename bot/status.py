"""The words of a job's status message, for every state. One place, every platform."""

from __future__ import annotations

from bot.models import Job, JobState

_PROMPT_PREVIEW = 80


def elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th … 11th, 12th, 13th … 21st."""
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def headline(job: Job) -> str:
    spec = job.spec
    prompt = spec.original_prompt
    if len(prompt) > _PROMPT_PREVIEW:
        prompt = prompt[: _PROMPT_PREVIEW - 1] + "…"
    cost = ""
    if job.cost_estimate:
        cost = f" · about ${job.cost_estimate:.2f}"
    return (
        f"Job {job.id} · {spec.duration}s {spec.resolution} {spec.aspect_ratio} · "
        f"{job.provider}{cost}\n“{prompt}”"
    )


def status_text(job: Job, *, now: float, queue_position: int | None = None) -> str:
    """The status line a user sees for ``job`` at time ``now``. ``queue_position`` is the
    job's place in this server's queue while it is queued, and in the provider's own queue
    (a GPU worker's) once it is submitted."""
    state = job.state
    if state is JobState.QUEUED:
        if queue_position:
            line = f"⏳ Waiting — number {queue_position} in this server's queue."
        else:
            line = "⏳ Queued — sending to the provider."
    elif state is JobState.SUBMITTED:
        if queue_position:
            line = f"📨 Sent to {job.provider} — {ordinal(queue_position)} in its queue."
        else:
            line = f"📨 Sent to {job.provider}; waiting for it to start."
    elif state is JobState.RUNNING:
        since = job.submitted_at or job.created_at
        progress = f" {round(job.progress * 100)}%" if job.progress is not None else ""
        line = f"🎬 Rendering{progress} · {elapsed(now - since)}"
    elif state is JobState.DELIVERING:
        line = "📦 Finished — posting the video."
    elif state is JobState.DELIVERED:
        took = elapsed((job.finished_at or now) - job.created_at)
        line = f"✅ Done in {took}."
    elif state is JobState.FAILED:
        line = f"❌ Failed: {job.reason or 'unknown reason'}"
    else:
        line = f"🚫 Cancelled{': ' + job.reason if job.reason else '.'}"
    if job.reason and state not in (JobState.FAILED, JobState.CANCELLED):
        # Until the job ends badly, its reason says why it runs on this provider.
        line = f"↪️ On {job.provider}: {job.reason}\n{line}"
    return f"{headline(job)}\n{line}"


def delivery_text(job: Job) -> str:
    """The words posted with a video; the chat adapter adds its own mention of the user."""
    spec = job.spec
    seed = f" · seed {spec.seed}" if spec.seed is not None else ""
    return (
        f"your video is ready: “{spec.original_prompt}”\n"
        f"{spec.duration}s · {spec.resolution} · {spec.aspect_ratio} · {job.provider}{seed}"
    )
