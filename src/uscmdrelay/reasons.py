"""The one line of an exception that is worth showing a user.

Config errors, TLS set-up, the client and command start failures all report an
exception's reason in one line; this is where that line is chosen.
"""


def reason(error):
    """An ssl error's short reason (CERTIFICATE_VERIFY_FAILED), else an OSError's
    strerror or a configparser error's message, else the first line of str(error), else
    the exception's type name."""
    text = None
    if type(error).__module__ == "ssl":
        text = getattr(error, "reason", None)
    text = (text or getattr(error, "strerror", None) or getattr(error, "message", None)
            or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
