"""Notification sinks: deliver one event somewhere and classify the failure."""

from __future__ import annotations

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.sinks.base import Sink
from watcher.sinks.log import LogSink
from watcher.sinks.slack import SlackSink
from watcher.sinks.webhook import WebhookSink


def build_sink(
    config: SinkConfig,
    session: aiohttp.ClientSession,
    clock: Clock | None = None,
) -> Sink:
    """Return the sink ``config.type`` names, using the process's one HTTP session.

    Args:
        config: The sink's configuration.
        session: The shared ``aiohttp`` session (HTTP sinks only).
        clock: Time for signatures, ``Retry-After`` dates and rate limits; the
            system clock when None.

    Raises:
        ConfigError: Unknown type, missing URL or malformed signing secret.
    """
    clock = clock if clock is not None else SystemClock()
    match config.type:
        case "webhook":
            return WebhookSink(config, session, clock)
        case "slack":
            return SlackSink(config, session, clock)
        case "log":
            return LogSink(config)
    raise ConfigError(
        [
            ConfigProblem(
                f"sinks.{config.name}.type",
                f"unknown sink type {config.type!r}; use webhook, slack or log",
            )
        ]
    )
