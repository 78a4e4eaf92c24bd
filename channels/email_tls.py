"""The TLS context of the IMAP and SMTP connections: the system's CAs (or a private CA's
PEM file), certificate and host name verified unless an operator turns that off."""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger(__name__)


def tls_context(ca_file: str | None, verify: bool = True, *, what: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        # a test server with a throwaway certificate: anyone on the path can read along
        log.warning("email: %s certificate NOT verified (verify_certificate: false)", what)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
