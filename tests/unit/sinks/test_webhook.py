import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.clock import VirtualClock
from tests.unit.sinks.fakes import completed_event, mock_post
from watcher.config import Secret, SinkConfig
from watcher.errors import ConfigError, DeliveryError
from watcher.sinks.webhook import WebhookSink

URL = "https://hooks.example.test/sklm/URL-TOKEN-3f9a"
SECRET_A = "whsec_" + base64.b64encode(b"first-signing-key-0123456789abcd").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second-signing-key-9876543210zyx").decode()


def _config(*secrets: str, **kwargs) -> SinkConfig:
    return SinkConfig(
        name="ops",
        type="webhook",
        url=Secret(URL),
        secrets=tuple(Secret(s) for s in secrets),
        **kwargs,
    )


@pytest.fixture
def clock():
    """A fake clock at the real time (signatures are checked against it)."""
    # Webhook.verify compares the timestamp with the real time (5 min tolerance).
    return VirtualClock.auto(datetime.now(UTC))


def _sent(mocked) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    [calls] = mocked.requests.values()
    kwargs = calls[-1].kwargs
    return kwargs["data"], kwargs["headers"], kwargs


async def test_posts_the_cloudevent_json(session, clock) -> None:
    """The body is the event's CloudEvents JSON, sent once without following redirects."""
    event = completed_event()
    sink = WebhookSink(_config(headers={"X-Team": "kms"}, timeout=3.0), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=204)
        await sink.deliver(event)
    body, headers, kwargs = _sent(mocked)
    assert json.loads(body) == event.to_dict()
    # Unsigned, the POST still carries the id receivers deduplicate on, and its time.
    assert headers == {
        "X-Team": "kms",
        "Content-Type": "application/json",
        "webhook-id": event.id,
        "webhook-timestamp": str(int(clock.now().timestamp())),
    }
    assert kwargs["allow_redirects"] is False
    assert kwargs["timeout"] == aiohttp.ClientTimeout(total=3.0)


async def test_signature_verifies_with_the_reference_package(session, clock) -> None:
    """The Standard Webhooks reference verifies our headers, and rejects a tampered body."""
    event = completed_event()
    sink = WebhookSink(_config(SECRET_A), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200)
        await sink.deliver(event)
    body, headers, _ = _sent(mocked)
    assert headers["webhook-id"] == event.id
    assert headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]+={0,2}", headers["webhook-signature"])
    assert Webhook(SECRET_A).verify(body, headers) == event.to_dict()
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(body.replace(b"sklm-prod-1", b"sklm-prod-2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_B).verify(body, headers)


async def test_rotation_sends_one_signature_per_secret(session, clock) -> None:
    """With two secrets, two signatures go out and each verifies with its own secret."""
    sink = WebhookSink(_config(SECRET_A, SECRET_B), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200)
        await sink.deliver(completed_event())
    body, headers, _ = _sent(mocked)
    first, second = headers["webhook-signature"].split(" ")
    assert Webhook(SECRET_A).verify(body, {**headers, "webhook-signature": first})
    assert Webhook(SECRET_B).verify(body, {**headers, "webhook-signature": second})
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_B).verify(body, {**headers, "webhook-signature": first})


async def test_unpadded_secret_is_accepted(session, clock) -> None:
    """A secret without base64 padding signs as the reference implementation does."""
    unpadded = SECRET_A.rstrip("=")
    sink = WebhookSink(_config(unpadded), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=200)
        await sink.deliver(completed_event())
    body, headers, _ = _sent(mocked)
    assert Webhook(SECRET_A).verify(body, headers)


def test_malformed_secret_is_a_config_error(clock) -> None:
    """A secret that is not base64 is reported by key, without its value."""
    with pytest.raises(ConfigError) as caught:
        WebhookSink(_config(SECRET_A, "whsec_not*base64!"), None, clock)  # type: ignore[arg-type]
    assert [(p.key, p.reason) for p in caught.value.problems] == [
        (
            "sinks.ops.secrets[1]",
            "not a Standard Webhooks secret (whsec_ followed by base64)",
        )
    ]
    assert "not*base64" not in str(caught.value)


async def test_retry_after_from_429(session, clock) -> None:
    """429 with Retry-After is transient and carries the requested delay."""
    sink = WebhookSink(_config(), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=429, headers={"Retry-After": "2"})
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(completed_event())
    assert (caught.value.permanent, caught.value.retry_after) == (False, 2.0)


async def test_redirect_is_not_followed(session, clock) -> None:
    """A 3xx is a permanent error and its Location is never requested."""
    elsewhere = "https://elsewhere.example.test/collect"
    sink = WebhookSink(_config(SECRET_A), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, status=307, headers={"Location": elsewhere})
        mock_post(mocked, elsewhere, status=200)
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(completed_event())
    assert caught.value.permanent
    assert [str(url) for _, url in mocked.requests] == [URL]


@pytest.mark.parametrize(
    ("exception", "permanent", "detail"),
    [
        (aiohttp.ServerDisconnectedError(), False, "ServerDisconnectedError"),
        (TimeoutError(), False, "no answer within 10 s"),
        (aiohttp.InvalidURL(URL), True, "invalid URL"),
    ],
)
async def test_transport_errors_are_classified(
    session, clock, exception, permanent, detail
) -> None:
    """Disconnects and timeouts are transient; an invalid URL is permanent."""
    sink = WebhookSink(_config(), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, exception=exception)
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(completed_event())
    assert caught.value.permanent is permanent
    assert caught.value.detail == detail


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 404, "body": URL},
        {"status": 500, "body": SECRET_A},
        {"exception": aiohttp.InvalidURL(URL)},
        {"exception": aiohttp.ClientConnectionError(URL)},
    ],
)
async def test_secrets_never_appear_in_errors_or_logs(
    session, clock, logs, answer
) -> None:
    """Neither the URL nor the signing secret shows in the error text or the logs."""
    sink = WebhookSink(_config(SECRET_A), session, clock)
    with aioresponses() as mocked:
        mock_post(mocked, URL, **answer)
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(completed_event())
    key = SECRET_A.removeprefix("whsec_")
    texts = [str(caught.value), repr(caught.value), caught.value.detail, repr(logs)]
    for text in texts:
        assert "URL-TOKEN" not in text
        assert key not in text
    assert str(caught.value).startswith("sink ops: ")
