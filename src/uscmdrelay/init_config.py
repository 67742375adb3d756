"""`uscmdrelay init`: writes a first, working configuration with a fresh random key.

It never overwrites anything: an existing auth.conf or relays.conf stops it before it
writes a byte.
"""

import os
import secrets

from .config import AUTH_FILE, RELAYS_FILE
from .keys import HASHED_KEY_PREFIX, key_digest

KEY_BYTES = 32  # 256 bits of entropy, 43 URL-safe characters

AUTH_TEMPLATE = """\
# uscmdrelay auth.conf: each [section] is an auth key. Keep this file mode 0600.
# auth_clusters: the relays.conf sections this key may use (or * for all).
# description: what the logs show for this key (the key itself is never logged).

[{key}]
description = created by uscmdrelay init
auth_clusters = default
"""

RELAYS_TEMPLATE = """\
# uscmdrelay relays.conf: each [section] is a cluster, each line 'name = command line'.
# Clients call "name" (the [default] cluster) or "cluster::name". Client arguments are
# appended as separate, literal words; no shell runs the line unless --shell-exec is on.
# A literal word can still be an option ('date -f FILE' prints FILE): a command takes
# no arguments (NAME.max_args = 0), or only ones after '--' or matching a pattern.

[default]
uptime = uptime
uptime.max_args = 0
date = date +%Y-%m-%d
date.max_args = 0
# echo does not honour '--': refuse any argument starting with '-' instead.
echo = echo
echo.arg_pattern = [^-].*
"""


def default_config_dir():
    """/etc/uscmdrelay for root, ~/.config/uscmdrelay for anyone else."""
    if os.geteuid() == 0:
        return "/etc/uscmdrelay"
    return os.path.expanduser("~/.config/uscmdrelay")


class InitError(Exception):
    """init could not write the configuration; str() is the message for the user."""


def generate_key():
    return secrets.token_urlsafe(KEY_BYTES)


def write_config(directory, key=None, hashed=False):
    """Creates `directory` (0700 when new), auth.conf (0600) and relays.conf.

    With `hashed`, auth.conf holds only the key's sha256 digest. Returns (key, auth path,
    relays path); raises InitError, having written nothing, when either file exists.
    """
    key = key or generate_key()
    section = HASHED_KEY_PREFIX + key_digest(key).hex() if hashed else key
    auth_path = os.path.join(directory, AUTH_FILE)
    relays_path = os.path.join(directory, RELAYS_FILE)
    for path in (auth_path, relays_path):
        if os.path.lexists(path):
            raise InitError("%s already exists; not overwriting it" % path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _create(auth_path, AUTH_TEMPLATE.format(key=section), 0o600)
        _create(relays_path, RELAYS_TEMPLATE, 0o644)
    except OSError as error:
        raise InitError("cannot write %s: %s" % (error.filename or directory,
                                                 error.strerror or error))
    return key, auth_path, relays_path


def _create(path, text, mode):
    # O_EXCL: never overwrite, even a file created since the check above. The mode is
    # set at creation, so the key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)  # the umask may have removed bits we asked for
