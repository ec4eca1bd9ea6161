"""config's pure core: Listen, parse_listen, is_loopback, and no I/O on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from watcher.config import LISTEN_FORMAT, Listen, is_loopback, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", Listen("127.0.0.1", 9464)),
        ("[::1]:9464", Listen("::1", 9464)),
        ("::1:9464", Listen("::1", 9464)),
        ("localhost:0", Listen("localhost", 0)),
        ("  [fe80::1]:1\n", Listen("fe80::1", 1)),
    ],
)
def test_parse_listen_gives_a_typed_listen(text: str, expected: Listen) -> None:
    """host:port parses into a Listen; brackets go, surrounding space is ignored."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["[::1:9464", "::1]:9464", "[[::1]]:9464", "127.0.0.1:²", "host:٣"]
)
def test_parse_listen_rejects_unbalanced_brackets_and_non_ascii_ports(
    text: str,
) -> None:
    """Unbalanced brackets and digits int() reads but a port is not are ValueErrors."""
    with pytest.raises(ValueError, match=r"^expected host:port, e\.g\. ") as caught:
        parse_listen(text)
    assert str(caught.value) == f"{LISTEN_FORMAT}, not {text!r}"


@pytest.mark.parametrize(
    ("listen", "text"),
    [
        (Listen("127.0.0.1", 9464), "127.0.0.1:9464"),
        (Listen("::1", 9464), "[::1]:9464"),
        (Listen("sklm-watcher.localhost", 0), "sklm-watcher.localhost:0"),
    ],
)
def test_listen_prints_back_as_host_port(listen: Listen, text: str) -> None:
    """str() of a Listen is host:port, IPv6 bracketed, and parses back to itself."""
    assert str(listen) == text
    assert parse_listen(text) == listen


def test_listen_unpacks_into_host_and_port() -> None:
    """A Listen unpacks like the (host, port) pair a bind takes."""
    host, port = Listen("::1", 9464)
    assert (host, port) == ("::1", 9464)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("localhost.", True),
        # RFC 6761 section 6.3: every name under .localhost is loopback.
        ("status.localhost", True),
        ("a.b.LOCALHOST", True),
        ("0.0.0.0", False),  # noqa: S104 - classifying only
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
        ("notlocalhost", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    """Loopback addresses, localhost and *.localhost (any case) only."""
    assert is_loopback(host) is expected
    assert Listen(host, 1).is_loopback is expected


def test_importing_the_tracker_loads_neither_ssl_nor_tomllib() -> None:
    """The pure core stays pure: config's I/O lives in configfile, not on this path."""
    code = (
        "import sys, watcher.tracker; "
        "print('ssl' in sys.modules, 'tomllib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.strip() == "False False"
