"""The simulator's TLS seam: a missing trustme is a named error, not an ImportError."""

from __future__ import annotations

import sys

import pytest

from watcher.simulator import TlsUnavailableError, make_tls


def test_make_tls_without_trustme_raises_tls_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As after a plain `pip install`: the error names the extra that brings trustme."""
    # A None entry makes `import trustme` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(TlsUnavailableError, match=r"sklm-watcher\[simulator\]"):
        make_tls()
    # Callers that caught the RuntimeError it used to be still catch it.
    assert issubclass(TlsUnavailableError, RuntimeError)
