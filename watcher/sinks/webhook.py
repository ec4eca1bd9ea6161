"""The webhook sink: POST the CloudEvent JSON, signed per Standard Webhooks v1."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

import aiohttp

from watcher.clock import Clock, SystemClock
from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem
from watcher.events import CONTENT_TYPE, Event
from watcher.sinks.base import classify, post

#: The prefix of a Standard Webhooks secret; the rest is the base64 key.
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)


def _decode_secret(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    # Tolerate unpadded base64, as the reference implementation does.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def signature_header(
    keys: Sequence[bytes], event_id: str, timestamp: int, body: bytes
) -> str:
    """Return the ``webhook-signature`` value: one ``v1,<base64>`` per key, spaced.

    Each signature is HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``; several keys
    let a receiver rotate its secret without missing a message.
    """
    signed = f"{event_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


class WebhookSink:
    """POSTs each event's CloudEvents JSON to one URL.

    Every POST carries the Standard Webhooks headers ``webhook-id`` (the event id,
    stable across retries, so receivers can deduplicate) and ``webhook-timestamp``;
    with ``secrets`` configured, ``webhook-signature`` too.

    Raises:
        ConfigError: At construction, when the URL is missing or a secret is not
            valid base64.
    """

    def __init__(
        self,
        config: SinkConfig,
        session: aiohttp.ClientSession,
        clock: Clock | None = None,
    ) -> None:
        if config.url is None or not config.url:
            raise ConfigError(
                [
                    ConfigProblem(
                        f"sinks.{config.name}.url", "a webhook sink needs a URL"
                    )
                ]
            )
        self._url = config.url
        self._config = config
        self._session = session
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._keys = self._decode_keys(config)

    @staticmethod
    def _decode_keys(config: SinkConfig) -> tuple[bytes, ...]:
        keys: list[bytes] = []
        for index, secret in enumerate(config.secrets):
            try:
                key = _decode_secret(secret.reveal())
            except (binascii.Error, ValueError):
                key = b""
            if not key:
                raise ConfigError(
                    [
                        ConfigProblem(
                            f"sinks.{config.name}.secrets[{index}]",
                            "not a Standard Webhooks secret (whsec_ followed by base64)",
                        )
                    ]
                )
            keys.append(key)
        return tuple(keys)

    @property
    def name(self) -> str:
        """The sink's configured name."""
        return self._config.name

    def headers(self, event: Event, body: bytes) -> dict[str, str]:
        """Return the request headers for ``event``: configured ones, then ours."""
        headers = dict(self._config.headers)
        headers["Content-Type"] = CONTENT_TYPE
        # Id and timestamp go out signed or not: receivers deduplicate on the id
        # (stable across retries and restarts) whether or not they verify.
        timestamp = int(self._clock.now().timestamp())
        headers["webhook-id"] = event.id
        headers["webhook-timestamp"] = str(timestamp)
        if self._keys:
            headers["webhook-signature"] = signature_header(
                self._keys, event.id, timestamp, body
            )
        return headers

    async def deliver(self, event: Event) -> None:
        """POST the event once.

        Raises:
            DeliveryError: Classified as in :mod:`watcher.sinks.base`.
        """
        body = event.to_json().encode()
        status, headers, _ = await post(
            self.name,
            self._session,
            self._url.reveal(),
            body,
            self.headers(event, body),
            seconds=self._config.timeout,
        )
        error = classify(self.name, status, headers, self._clock.now())
        if error is not None:
            raise error
