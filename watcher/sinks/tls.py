"""TLS for the sinks that open their own connections (e-mail, syslog): one client context.

Trust comes from the sink's configuration alone, as for SKLM servers: ``ca_file``
when set, else OpenSSL's compiled-in CA locations (``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` in the environment are not consulted). ``verify_tls = false``
turns verification off and is logged as a warning every time the sink is built.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

import structlog

from watcher.config import SinkConfig
from watcher.errors import ConfigError, ConfigProblem

#: Logged when a sink is built with certificate verification turned off.
TLS_UNVERIFIED: Final = "sink.tls_unverified"

_log = structlog.get_logger(__name__)


def client_context(config: SinkConfig) -> ssl.SSLContext:
    """Return the client ``SSLContext`` for the sink's SMTP server or syslog relay.

    Raises:
        ConfigError: ``ca_file`` cannot be read or holds no usable certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.verify_tls:
        _log.warning(
            TLS_UNVERIFIED,
            sink=config.name,
            hint="TLS CERTIFICATE VERIFICATION IS OFF: anyone on the network path "
            "can read and change what this sink sends; set ca_file instead",
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=os.fspath(config.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        f"sinks.{config.name}.ca_file",
                        f"cannot load {config.ca_file} ({type(exc).__name__}); "
                        "give a readable PEM file of CA certificates",
                    )
                ]
            ) from exc
        return context
    # OpenSSL's compiled-in locations, not set_default_verify_paths(), which would
    # let SSL_CERT_FILE / SSL_CERT_DIR swap the trust anchors.
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile or capath:
        context.load_verify_locations(cafile=cafile, capath=capath)
    return context


def is_certificate_error(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its cause chain is a certificate verification failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
