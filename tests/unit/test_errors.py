from __future__ import annotations

import pytest

from watcher import tracker
from watcher.errors import (
    ConfigError,
    DeliveryError,
    Failure,
    JournalError,
    SklmAuthError,
    SklmError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
    WatcherError,
)


@pytest.mark.parametrize(
    ("error", "failure", "transient"),
    [
        (SklmUnreachable("a", "connection refused"), Failure.UNREACHABLE, True),
        (SklmProtocolError("a", "HTTP 500"), Failure.PROTOCOL, True),
        (SklmTlsError("a", "certificate verify failed"), Failure.TLS, False),
        (SklmAuthError("a", "CTGKM6003E"), Failure.AUTH, False),
        (SklmError("a", "something else"), Failure.PROTOCOL, True),
    ],
)
def test_each_sklm_error_class_names_its_failure_kind(
    error: SklmError, failure: Failure, transient: bool
) -> None:
    """The error class is the one place that says what a failed poll records."""
    assert (error.failure_kind, error.transient) == (failure, transient)


def test_failure_values_are_the_persisted_strings() -> None:
    """The kinds keep the strings stored in ServerState and shown in status."""
    assert [str(f) for f in Failure] == ["unreachable", "protocol", "tls", "auth"]
    assert tracker.Failure is Failure


@pytest.mark.parametrize(("permanent", "transient"), [(True, False), (False, True)])
def test_delivery_error_permanent_is_the_opposite_of_transient(
    permanent: bool, transient: bool
) -> None:
    """``permanent=`` stays the constructor's word; ``transient`` is the shared one."""
    error = DeliveryError("ops", "HTTP 410", permanent=permanent)
    assert (error.permanent, error.transient) == (permanent, transient)


def test_errors_without_a_retry_story_are_not_transient() -> None:
    """Only classes that say so claim a retry may help."""
    assert not WatcherError("x").transient
    assert not ConfigError([]).transient
    assert not JournalError("disk full").transient
