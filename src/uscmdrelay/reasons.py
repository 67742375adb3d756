"""The one line of an exception that is worth showing a user.

Config errors, TLS set-up, the client and command start failures all report an
exception's reason in one line; this is where that line is chosen.
"""

import sys


def reason(error):
    """An ssl error's short reason (CERTIFICATE_VERIFY_FAILED), else an OSError's
    strerror or a configparser error's message, else the first line of str(error), else
    the exception's type name."""
    text = None
    # ssl is loaded only where TLS is used, and never by this module. Its errors are
    # told by class, not by their module's name, which is not "ssl" on PyPy.
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(error, ssl.SSLError):
        text = getattr(error, "reason", None)
    text = (text or getattr(error, "strerror", None) or getattr(error, "message", None)
            or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
