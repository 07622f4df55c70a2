"""Slack files: downloaded with the bot token from Slack's file host only, refused clearly."""

from __future__ import annotations

import pytest

from adapters.chat.slack.files import SlackFiles
from bot.errors import Refusal
from tests.fakes.slack import FakeSlack


def slack_file(url: str, name: str = "alice.png") -> dict[str, object]:
    return {"id": "F1", "name": name, "size": 10, "url_private_download": url}


@pytest.mark.parametrize(
    "url",
    [
        "http://files.slack.com/files-pri/T1-F1/download/a.png",  # not https
        "https://files.slack.com.example.net/files-pri/T1-F1/a.png",
        "https://example.net/files.slack.com/a.png",
        "https://files.slack.com@example.net/a.png",  # credentials trick: the host is example.net
        "https://files.slack.com:8443/files-pri/T1-F1/a.png",
        "ftp://files.slack.com/a.png",
        "/files-pri/T1-F1/a.png",
    ],
)
def test_production_takes_files_from_slacks_file_host_over_https_only(url: str) -> None:
    files = SlackFiles("xoxb-token")
    with pytest.raises(Refusal) as refused:
        files.incoming(slack_file(url))
    assert refused.value.code == "foreign_file"
    assert "“alice.png” is not a file uploaded to this Slack workspace" in refused.value.message


def test_a_file_on_slacks_host_is_accepted_with_its_declared_size() -> None:
    files = SlackFiles("xoxb-token")
    url = "https://FILES.slack.com:443/files-pri/T1-F1/download/alice.png"
    incoming = files.incoming(slack_file(url))
    assert (incoming.name, incoming.declared_size) == ("alice.png", 10)


def test_a_file_slack_did_not_share_is_refused() -> None:
    with pytest.raises(Refusal) as refused:
        SlackFiles("xoxb-token").incoming({"id": "F1", "name": "secret.png"})
    assert refused.value.code == "download_failed"


async def test_download_streams_with_the_bot_token() -> None:
    async with FakeSlack() as slack:
        data = bytes(range(256)) * 4000
        stored = slack.add_file("clip.wav", data, "audio/wav")
        incoming = SlackFiles(slack.token, origins=[slack.url]).incoming(stored)
        chunks = [chunk async for chunk in incoming.open()]
        assert b"".join(chunks) == data and len(chunks) > 1
        assert [d.authorization for d in slack.downloads] == [f"Bearer {slack.token}"]


async def test_a_token_slack_will_not_serve_files_to_is_explained() -> None:
    async with FakeSlack() as slack:
        stored = slack.add_file("alice.png", b"\x89PNG....", "image/png")
        files = SlackFiles("xoxb-without-files-read", origins=[slack.url])
        with pytest.raises(Refusal) as refused:
            _ = [chunk async for chunk in files.incoming(stored).open()]
        assert refused.value.code == "download_failed"
        assert "needs the files:read scope" in refused.value.message
