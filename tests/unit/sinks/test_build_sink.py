import aiohttp
import pytest

from watcher.config import Secret, SinkConfig
from watcher.errors import ConfigError
from watcher.sinks import build_sink
from watcher.sinks.log import LogSink
from watcher.sinks.slack import SlackSink
from watcher.sinks.webhook import WebhookSink


@pytest.mark.parametrize(
    ("type_", "cls"), [("webhook", WebhookSink), ("slack", SlackSink), ("log", LogSink)]
)
async def test_builds_the_configured_type(type_, cls) -> None:
    """Each sink type builds its class, named after the configuration."""
    config = SinkConfig(name="x", type=type_, url=Secret("https://h.example.test/"))
    async with aiohttp.ClientSession() as session:
        sink = build_sink(config, session)
    assert isinstance(sink, cls)
    assert sink.name == "x"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            SinkConfig(name="x", type="pager"),
            ("sinks.x.type", "unknown sink type 'pager'; use webhook, slack or log"),
        ),
        (
            SinkConfig(name="x", type="webhook"),
            ("sinks.x.url", "a webhook sink needs a URL"),
        ),
        (
            SinkConfig(name="x", type="slack", url=Secret("")),
            ("sinks.x.url", "a Slack sink needs a URL"),
        ),
    ],
)
async def test_unusable_configs_are_config_errors(config, problem) -> None:
    """An unknown type or a missing URL is a ConfigError naming the key."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigError) as caught:
            build_sink(config, session)
    assert [(p.key, p.reason) for p in caught.value.problems] == [problem]
