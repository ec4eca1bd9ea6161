from datetime import timedelta
from email.utils import format_datetime

import pytest

from tests.unit.sinks.fakes import T0
from watcher.sinks.base import classify, parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("2", 2.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("nan", None),
        ("soon", None),
        (format_datetime(T0 + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(T0 - timedelta(seconds=90), usegmt=True), 0.0),
        ("Sun, 29 Nov 2026 10:01:00 GMT", 60.0),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(value, expected) -> None:
    """Retry-After is seconds or an HTTP date turned into seconds from now; junk is None."""
    assert parse_retry_after(value, T0) == expected


# status, Retry-After header, expected (permanent, retry_after); None = delivered
CLASSIFICATION = [
    (200, None, None),
    (202, None, None),
    (204, None, None),
    (301, None, (True, None)),
    (302, None, (True, None)),
    (307, None, (True, None)),
    (308, None, (True, None)),
    (400, None, (True, None)),
    (401, None, (True, None)),
    (403, None, (True, None)),
    (404, None, (True, None)),
    (410, None, (True, None)),
    (413, None, (True, None)),
    (422, None, (True, None)),
    (408, None, (False, None)),
    (409, None, (False, None)),
    (425, None, (False, None)),
    (429, None, (False, None)),
    (429, "2", (False, 2.0)),
    (429, "Sun, 29 Nov 2026 10:05:00 GMT", (False, 300.0)),
    (500, None, (False, None)),
    (500, "30", (False, None)),
    (502, None, (False, None)),
    (503, "7", (False, 7.0)),
    (504, None, (False, None)),
]


@pytest.mark.parametrize(("status", "retry_after", "expected"), CLASSIFICATION)
def test_http_status_classification(status, retry_after, expected) -> None:
    """Each status maps to delivered, transient (with Retry-After) or permanent."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    error = classify("ops", status, headers, T0)
    if expected is None:
        assert error is None
        return
    assert error is not None
    assert (error.permanent, error.retry_after) == expected
    assert error.sink == "ops"
    assert str(error).startswith(f"sink ops: HTTP {status}")
