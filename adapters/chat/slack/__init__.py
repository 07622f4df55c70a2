"""Slack: ``/r2v`` commands, a "Save as character" form, and videos posted into threads."""

from adapters.chat.slack.adapter import SlackAdapter
from adapters.chat.slack.files import SLACK_FILE_ORIGINS

__all__ = ["SLACK_FILE_ORIGINS", "SlackAdapter"]
