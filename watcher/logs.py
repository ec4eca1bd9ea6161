"""Logging set-up for structlog, and the redaction processor (a second line of defence).

Under systemd (``JOURNAL_STREAM`` names our standard error), every line starts with
the sd-daemon ``<N>`` syslog priority prefix, which journald strips and stores as the
entry's priority (``SyslogLevelPrefix=yes``, systemd's default): so
``journalctl -u sklm-watcher -p warning`` shows exactly the problems.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

#: Keys whose values are never logged, whatever they hold.
_SECRET_KEYS: Final = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "secrets",
        "token",
        "authorization",
        "userauthid",
        "user_auth_id",
        "session_id",
        "url",
        "webhook_url",
        "signature",
    }
)
_REDACTED: Final = "***"
# Values that look like secrets wherever they appear: SKLM auth headers, Standard
# Webhooks secrets, Slack webhook URLs, and credentials inside URLs.
_SECRET_PATTERNS: Final = (
    re.compile(r"(userAuthId=)[^\s,;\"']+", re.IGNORECASE),
    re.compile(r"whsec_[A-Za-z0-9+/=]+"),
    re.compile(r"https://hooks\.slack\.com/\S+"),
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"),
)


def _scrub(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + _REDACTED + m.group(2), text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: m.group(1) + _REDACTED, text)
        else:
            text = pattern.sub(_REDACTED, text)
    return text


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: mask secret-named keys and secret-looking strings.

    Secrets are held in ``Secret`` objects that never render their value; this
    processor catches the mistakes that slip past that (a URL or header logged
    by a careless call).
    """
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS and value is not None:
            event_dict[key] = _REDACTED
        elif isinstance(value, str):
            event_dict[key] = _scrub(value)
    return event_dict


#: sd-daemon(3) priorities by structlog method name (syslog's numbers).
SYSLOG_PRIORITIES: Final[Mapping[str, int]] = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
#: Lines of a method without a priority of its own (``msg``, ``log`` at NOTSET).
_DEFAULT_PRIORITY: Final = 6


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journald stream systemd connected us to.

    ``JOURNAL_STREAM`` holds ``device:inode`` of that stream; comparing it with the
    stream's own ``fstat`` (as systemd.exec(5) advises) keeps the prefix out of a
    child's output that was redirected elsewhere but inherited the variable.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (a test's StringIO, a closed stream)
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def for_stream(text: str, priority: int, stream: TextIO) -> str:
    """Return ``text`` with each line prefixed ``<priority>`` if ``stream`` is journald's.

    For what the CLI prints itself rather than logs (a refused configuration at
    start-up): under systemd it must be filed at its level too, or
    ``journalctl -p warning`` would miss why the service did not start.
    """
    if not is_journal_stream(stream):
        return text
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def syslog_prefixed(
    renderer: Callable[[Any, str, MutableMapping[str, Any]], str],
) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    """Wrap a renderer so each rendered line starts with its ``<N>`` priority.

    Every line, not only the first: journald reads a multi-line entry (a console
    traceback) as several, and each must keep the priority.
    """

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        prefix = f"<{SYSLOG_PRIORITIES.get(method, _DEFAULT_PRIORITY)}>"
        text = renderer(logger, method, event_dict)
        return "\n".join(prefix + line for line in text.split("\n"))

    return render


def configure(
    *, json: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure structlog once for the process (called only by the CLI).

    Args:
        json: JSON lines (for journald) when True, a console format when False;
            None picks JSON unless ``stream`` is a terminal.
        level: The minimum level logged.
        stream: Where logs go; standard error by default, so command output on
            standard output stays clean for pipes. When it is the journald stream
            (``JOURNAL_STREAM``), each line carries its syslog priority.
    """
    out = stream if stream is not None else sys.stderr
    as_json = not out.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    if is_journal_stream(out):
        renderer = syslog_prefixed(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
