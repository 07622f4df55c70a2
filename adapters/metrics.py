"""The bot's metrics in Prometheus text, served at ``GET /metrics``.

A registry of our own (not the process-wide default), so two bots in one process — tests — do not
collide, and so the exposition holds exactly what the bot counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class PrometheusMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._jobs = Counter(
            "r2v_jobs_finished",
            "Jobs by provider and final state",
            ["provider", "state"],
            registry=self.registry,
        )
        self._submit = Histogram(
            "r2v_submit_seconds",
            "Time for a provider to accept a submit",
            ["provider"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self._result = Histogram(
            "r2v_time_to_result_seconds",
            "From submit to a fetched result",
            ["provider"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600),
            registry=self.registry,
        )
        self._webhooks = Counter(
            "r2v_webhook_checks_failed",
            "Webhooks refused (token, signature, timestamp)",
            ["provider"],
            registry=self.registry,
        )
        self._deliveries = Counter(
            "r2v_deliveries", "Videos delivered into chat", ["platform"], registry=self.registry
        )
        self._retries = Counter(
            "r2v_provider_retries",
            "Provider requests retried after 429/5xx",
            ["provider"],
            registry=self.registry,
        )
        self._keys = Counter(
            "r2v_provider_key_rejected",
            "Provider calls refused for the bot's key (HTTP 401/403): a configuration error",
            ["provider"],
            registry=self.registry,
        )

    def job_finished(self, provider: str, state: str) -> None:
        self._jobs.labels(provider, state).inc()

    def submit_latency(self, provider: str, seconds: float) -> None:
        self._submit.labels(provider).observe(seconds)

    def time_to_result(self, provider: str, seconds: float) -> None:
        self._result.labels(provider).observe(seconds)

    def webhook_rejected(self, provider: str) -> None:
        self._webhooks.labels(provider).inc()

    def delivered(self, platform: str) -> None:
        self._deliveries.labels(platform).inc()

    def retried(self, provider: str) -> None:
        self._retries.labels(provider).inc()

    def key_rejected(self, provider: str) -> None:
        self._keys.labels(provider).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
