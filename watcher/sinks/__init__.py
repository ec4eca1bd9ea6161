"""Notification sinks: deliver one event somewhere and classify the failure."""

from __future__ import annotations

from typing import Final

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import SINK_TYPES, SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.sinks.base import Sink
from watcher.sinks.email import EmailSink
from watcher.sinks.log import LogSink
from watcher.sinks.pagerduty import PagerDutySink
from watcher.sinks.slack import SlackSink
from watcher.sinks.syslog import SyslogSink
from watcher.sinks.teams import TeamsSink
from watcher.sinks.webhook import WebhookSink

_TYPES: Final = ", ".join(SINK_TYPES[:-1]) + f" or {SINK_TYPES[-1]}"


def build_sink(
    config: SinkConfig,
    session: aiohttp.ClientSession,
    clock: Clock | None = None,
) -> Sink:
    """Return the sink ``config.type`` names, using the process's one HTTP session.

    Args:
        config: The sink's configuration.
        session: The shared ``aiohttp`` session (HTTP sinks only: webhook, slack,
            pagerduty, teams; email and syslog open their own connections).
        clock: Time for signatures, ``Retry-After`` dates and rate limits; the
            system clock when None.

    Raises:
        ConfigError: Unknown type, missing URL, routing key or host, or a
            malformed signing secret.
    """
    clock = clock if clock is not None else SystemClock()
    match config.type:
        case "webhook":
            return WebhookSink(config, session, clock)
        case "slack":
            return SlackSink(config, session, clock)
        case "log":
            return LogSink(config)
        case "pagerduty":
            return PagerDutySink(config, session, clock)
        case "teams":
            return TeamsSink(config, session, clock)
        case "email":
            return EmailSink(config, clock)
        case "syslog":
            return SyslogSink(config, clock)
    raise ConfigError(
        [
            ConfigProblem(
                f"sinks.{config.name}.type",
                f"unknown sink type {config.type!r}; use {_TYPES}",
            )
        ]
    )
