"""A throw-away CA and server certificate for the simulator's HTTPS (trustme)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Sequence

from watcher.errors import TlsUnavailableError


def make_tls(
    hostnames: Sequence[str] = ("127.0.0.1", "localhost"),
) -> tuple[bytes, ssl.SSLContext, str]:
    """Make a throw-away CA and a server certificate for ``hostnames``.

    Returns:
        The CA certificate (PEM), a server ``SSLContext`` presenting the leaf, and the
        leaf's SHA-256 fingerprint as lowercase hex (for ``tls_fingerprint``).

    Raises:
        TlsUnavailableError: trustme is not installed.
    """
    try:
        import trustme
    except ImportError as exc:
        raise TlsUnavailableError(
            "the simulator's --tls needs trustme: pip install 'sklm-watcher[simulator]'"
        ) from exc
    ca = trustme.CA(organization_name="sklm-watcher simulator")
    leaf = ca.issue_cert(*hostnames)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    leaf_pem = leaf.cert_chain_pems[0].bytes().decode("ascii")
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf_pem)).hexdigest()
    ca_pem: bytes = ca.cert_pem.bytes()
    return ca_pem, context, fingerprint
