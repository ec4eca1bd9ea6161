import aiohttp
import pytest

from watcher.config import Secret, SinkConfig
from watcher.errors import ConfigError
from watcher.sinks import build_sink
from watcher.sinks.email import EmailSink
from watcher.sinks.log import LogSink
from watcher.sinks.pagerduty import PagerDutySink
from watcher.sinks.slack import SlackSink
from watcher.sinks.syslog import SyslogSink
from watcher.sinks.teams import TeamsSink
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
            (
                "sinks.x.type",
                "unknown sink type 'pager'; use webhook, slack, log, pagerduty, teams, email or syslog",
            ),
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


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        (
            SinkConfig(name="x", type="pagerduty", routing_key=Secret("k" * 32)),
            PagerDutySink,
        ),
        (
            SinkConfig(name="x", type="teams", url=Secret("https://h.example.test/")),
            TeamsSink,
        ),
        (
            SinkConfig(
                name="x",
                type="email",
                host="smtp.example.test",
                transport="starttls",
                sender="a@example.test",
                recipients=("b@example.test",),
            ),
            EmailSink,
        ),
        (
            SinkConfig(
                name="x", type="syslog", host="siem.example.test", transport="tcp"
            ),
            SyslogSink,
        ),
    ],
)
async def test_builds_the_new_sink_types(config, cls) -> None:
    """pagerduty, teams, email and syslog build their classes (issue 15)."""
    async with aiohttp.ClientSession() as session:
        sink = build_sink(config, session)
    assert isinstance(sink, cls)
    assert sink.name == "x"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            SinkConfig(name="x", type="pagerduty"),
            ("sinks.x.routing_key", "a pagerduty sink needs a routing key"),
        ),
        (
            SinkConfig(name="x", type="teams"),
            ("sinks.x.url", "a Teams sink needs a URL"),
        ),
    ],
)
async def test_new_sinks_without_their_secret_are_config_errors(
    config, problem
) -> None:
    """A pagerduty sink without routing key or a teams sink without URL is refused."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigError) as caught:
            build_sink(config, session)
    assert [(p.key, p.reason) for p in caught.value.problems] == [problem]
