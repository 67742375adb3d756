"""TLS contexts for the server and the client (stdlib `ssl`, TLS 1.2 or newer).

Imported only when TLS is asked for, so a plain-TCP server or client never pays for the
ssl module. Problems with certificate or key files raise TLSError with a one-line
message naming the file, at start-up rather than at the first request.
"""

import ssl

from .reasons import reason

# What a non-blocking TLS socket raises instead of BlockingIOError.
WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
WANT_WRITE = ssl.SSLWantWriteError


# Enough to tell a TLS record from a JSON request after some blank lines.
SNIFF_BYTES = 64


def first_bytes_kind(data):
    """What the first bytes on a TLS listener are: "closed" (none: end of stream),
    "blank" (white space so far: no TLS record starts with it), "plain" (a plain-text
    request: `{` after white space), or "tls" (anything else: a TLS record starts with
    0x16, and garbage is left to the handshake to refuse)."""
    if not data:
        return "closed"
    first = data.lstrip(b" \t\r\n")[:1]
    if not first:
        return "blank"
    return "plain" if first == b"{" else "tls"


class TLSError(Exception):
    """A TLS set-up problem; str() is the message for the user."""


def server_context(cert_file, key_file=None, client_ca_file=None):
    """A server context serving `cert_file`; with `client_ca_file`, clients must present
    a certificate signed by that CA (mutual TLS). Raises TLSError."""
    _check_readable(("--tls-cert", cert_file), ("--tls-key", key_file),
                    ("--tls-client-ca", client_ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _require_tls12(context)
    _load_chain(context, cert_file, key_file, "--tls-cert", "--tls-key")
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise TLSError("--tls-client-ca %s: %s" % (client_ca_file, reason(error)))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file=None, cert_file=None, key_file=None):
    """A client context that verifies the server (against `ca_file`, or the system's
    CAs) and presents `cert_file` when given. Raises TLSError."""
    _check_readable(("--tls-ca", ca_file), ("--tls-cert", cert_file),
                    ("--tls-key", key_file))
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise TLSError("--tls-ca %s: %s" % (ca_file, reason(error)))
    _require_tls12(context)
    if cert_file:
        _load_chain(context, cert_file, key_file, "--tls-cert", "--tls-key")
    return context


def _check_readable(*flags_and_paths):
    """Names the flag and file that cannot be opened: ssl's own errors name neither."""
    for flag, path in flags_and_paths:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise TLSError("%s %s: %s" % (flag, path, error.strerror or error))


def _load_chain(context, cert_file, key_file, cert_flag, key_flag):
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TLSError("%s %s / %s %s: cannot load the certificate and key: %s"
                       % (cert_flag, cert_file, key_flag, key_file or "(in the same file)",
                          reason(error)))


def _require_tls12(context):
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:  # Python 3.6 has no minimum_version
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
