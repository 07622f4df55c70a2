"""The one aiohttp application: provider webhooks, health, and (later) media and Slack events."""

from adapters.http.server import HttpServer, build_app

__all__ = ["HttpServer", "build_app"]
