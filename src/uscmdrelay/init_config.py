"""`uscmdrelay init`: writes a first, working configuration with a fresh random key.

It never overwrites anything: an existing auth.conf or relays.conf stops it before it
writes a byte.
"""

import os
import pwd
import secrets
import shlex
import stat

from . import config
from .config import AUTH_FILE, RELAYS_FILE
from .fingerprint import hashed_key_section

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
    """/etc/uscmdrelay for root, ~/.config/uscmdrelay (expanded) for anyone else."""
    return os.path.expanduser(config.default_config_dir())


class InitError(Exception):
    """init could not write the configuration; str() is the message for the user."""


def generate_key():
    return secrets.token_urlsafe(KEY_BYTES)


def write_config(directory, key=None, hashed=False):
    """Creates `directory` (0700 when new), auth.conf (0600) and relays.conf.

    With `hashed`, auth.conf holds only the key's sha256 digest. Returns (key, auth path,
    relays path). Raises InitError, having left nothing behind, when either file exists,
    when an existing `directory` belongs to another user or others may write to it, or
    when a file cannot be written.
    """
    key = key or generate_key()
    section = hashed_key_section(key) if hashed else key
    auth_path = os.path.join(directory, AUTH_FILE)
    relays_path = os.path.join(directory, RELAYS_FILE)
    for path in (auth_path, relays_path):
        if os.path.lexists(path):
            raise InitError("%s already exists; not overwriting it" % path)
    created = False
    written = []
    dir_fd = None
    writing = None  # the file being written, for the message
    try:
        try:
            os.makedirs(directory, mode=0o700)
            created = True
        except FileExistsError:
            pass
        # Everything below works on this descriptor: the directory checked is the one
        # written into, even if the path is swapped meanwhile.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        if created:
            os.fchmod(dir_fd, 0o700)  # makedirs' mode is reduced by the umask
        _check_directory(directory, os.fstat(dir_fd))
        for name, text, mode in ((AUTH_FILE, AUTH_TEMPLATE.format(key=section), 0o600),
                                 (RELAYS_FILE, RELAYS_TEMPLATE, 0o644)):
            writing = os.path.join(directory, name)
            _create(dir_fd, name, text, mode)
            written.append(name)
    except (OSError, InitError) as error:
        _remove(dir_fd, written, directory if created else None)
        if isinstance(error, InitError):
            raise
        raise InitError("cannot write %s: %s" % (writing or error.filename or directory,
                                                 error.strerror or error))
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return key, auth_path, relays_path


def _check_directory(directory, info):
    """Raises InitError unless `info` (the directory's fstat) is ours and private enough
    that no one else can swap the files we create (OpenSSH's StrictModes)."""
    uid = os.geteuid()
    if info.st_uid != uid:
        raise InitError("cannot write into %s: it belongs to %s, not to %s; run "
                        "chown %s %s, or choose another --config-dir"
                        % (directory, _user(info.st_uid), _user(uid), _name(uid),
                           shlex.quote(directory)))
    if info.st_mode & 0o022:
        raise InitError("cannot write into %s: mode %04o lets group or others write to "
                        "it; run chmod go-w %s, or choose another --config-dir"
                        % (directory, stat.S_IMODE(info.st_mode), shlex.quote(directory)))


def _name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid):
    """'name (uid N)', or 'uid N' for a uid without a name."""
    name = _name(uid)
    return "uid %d" % uid if name == str(uid) else "%s (uid %d)" % (name, uid)


def _create(dir_fd, name, text, mode):
    # O_EXCL: never overwrite, even a file created since the check above; O_NOFOLLOW: never
    # write through a symlink. The mode is set at creation, so the key is never readable
    # by others, not even for a moment; fchmod (not chmod by path, which would follow a
    # symlink swapped in) then restores bits the umask removed.
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                 dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = None
            handle.write(text)
    except BaseException:
        if fd is not None:
            os.close(fd)
        _unlink(dir_fd, name)
        raise


def _remove(dir_fd, names, created_directory):
    """Removes the files init wrote, and the directory if it created it (when empty)."""
    if dir_fd is not None:
        for name in names:
            _unlink(dir_fd, name)
    if created_directory is not None:
        try:
            os.rmdir(created_directory)
        except OSError:
            pass  # not empty, or already gone: leave it


def _unlink(dir_fd, name):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
