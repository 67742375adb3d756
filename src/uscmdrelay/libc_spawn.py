"""The C library's posix_spawn(3), through ctypes, for the interpreters whose os module
lacks it: Python 3.6 and 3.7, and PyPy 3.

os.posix_spawn (CPython 3.8+) starts a command the way glibc does it, with a vfork-like
clone that shares the server's memory until the exec, so the loop waits for little more
than the exec. Without it, Popen forks the whole server first: on Python 3.6 that held
the loop for 1.2 ms of CPU per command, three times what the command itself costs
(issue 17's measurements). This module calls the same C function with the same file
actions and attributes `spawn` passes os.posix_spawn, so a command starts identically
whichever of the two calls it.

`load()` gives a `LibcSpawn`, or None when the C library cannot do all of it: no ctypes,
not Linux, no posix_spawn, or one that refuses POSIX_SPAWN_SETSID (glibc before 2.26,
whose posix_spawn also forked instead of cloning). Then `spawn` uses Popen, as before.
It is not a general binding: just the one call `spawn` makes.
"""

import os
import sys

# <spawn.h> of glibc and musl alike (Linux only).
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
# The C types are opaque: glibc's posix_spawnattr_t takes 336 bytes on x86-64, its
# file actions 80 and a sigset_t 128. Each gets a buffer well above any C library's.
_OPAQUE_BYTES = 1024

_loaded = []  # [LibcSpawn or None] once load() has looked


def load():
    """The LibcSpawn of this process, or None if its C library cannot do the job."""
    if not _loaded:
        _loaded.append(_load())
    return _loaded[0]


def _load():
    if not sys.platform.startswith("linux"):
        return None  # the flag values above are Linux's
    try:
        import ctypes
        return LibcSpawn(ctypes, ctypes.CDLL(None, use_errno=True))
    except (ImportError, OSError, AttributeError, ValueError):
        # No ctypes module (a Python built without libffi), no such symbol, or a
        # C library that refused the attributes.
        return None


class LibcSpawn(object):
    """posix_spawn and posix_spawnp of the C library `libc`, for `spawn`."""

    def __init__(self, ctypes, libc):
        self._ctypes = ctypes
        self._libc = libc
        pointer, number, text = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        texts = ctypes.POINTER(text)
        for name, argtypes in (
                ("posix_spawn_file_actions_init", [pointer]),
                ("posix_spawn_file_actions_destroy", [pointer]),
                ("posix_spawn_file_actions_addopen",
                 [pointer, number, text, number, ctypes.c_uint]),
                ("posix_spawn_file_actions_adddup2", [pointer, number, number]),
                ("posix_spawnattr_init", [pointer]),
                ("posix_spawnattr_setflags", [pointer, ctypes.c_short]),
                ("posix_spawnattr_setsigmask", [pointer, pointer]),
                ("posix_spawnattr_setsigdefault", [pointer, pointer]),
                ("sigemptyset", [pointer]),
                ("sigaddset", [pointer, number]),
                ("posix_spawn", [ctypes.POINTER(number), text, pointer, pointer, texts,
                                 texts]),
                ("posix_spawnp", [ctypes.POINTER(number), text, pointer, pointer, texts,
                                  texts])):
            function = getattr(libc, name)
            function.argtypes = argtypes
            function.restype = number
        self._attributes = {}  # the signals reset to default -> their attributes
        # Raises OSError (EINVAL) now for a C library without POSIX_SPAWN_SETSID.
        self._attributes_for(())

    def spawn(self, argv, env, stdout_fd, stderr_fd, default_signals, search):
        """Starts `argv` (a list of str) with environment `env` (a mapping of str), stdin
        on /dev/null and stdout and stderr on the two descriptors, in a session of its
        own, with an empty signal mask and `default_signals` at their defaults; looks
        argv[0] up in PATH if `search`. Returns the pid; raises OSError (the errno the
        exec or a file action failed with) or ValueError (a NUL in a string, a '=' in
        a variable name), as os.posix_spawn does."""
        ctypes, libc = self._ctypes, self._libc
        path = _c_string(argv[0])
        arguments = [_c_string(argument) for argument in argv]
        variables = [_variable(name, value) for name, value in env.items()]
        c_argv = (ctypes.c_char_p * (len(arguments) + 1))(*arguments)
        c_env = (ctypes.c_char_p * (len(variables) + 1))(*variables)
        attributes = self._attributes_for(tuple(default_signals))
        actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
        _check(libc.posix_spawn_file_actions_init(actions))
        try:
            _check(libc.posix_spawn_file_actions_addopen(actions, 0, os.devnull.encode(),
                                                         os.O_RDONLY, 0))
            _check(libc.posix_spawn_file_actions_adddup2(actions, stdout_fd, 1))
            _check(libc.posix_spawn_file_actions_adddup2(actions, stderr_fd, 2))
            pid = ctypes.c_int()
            call = libc.posix_spawnp if search else libc.posix_spawn
            error = call(ctypes.byref(pid), path, actions, attributes, c_argv, c_env)
        finally:
            libc.posix_spawn_file_actions_destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), argv[0])
        return pid.value

    def _attributes_for(self, default_signals):
        """The spawn attributes (made once, only ever read by posix_spawn): a new
        session, an empty signal mask, `default_signals` reset to their defaults."""
        attributes = self._attributes.get(default_signals)
        if attributes is None:
            ctypes, libc = self._ctypes, self._libc
            attributes = ctypes.create_string_buffer(_OPAQUE_BYTES)
            empty = ctypes.create_string_buffer(_OPAQUE_BYTES)
            defaults = ctypes.create_string_buffer(_OPAQUE_BYTES)
            _check(libc.posix_spawnattr_init(attributes))
            _check(libc.sigemptyset(empty))
            _check(libc.sigemptyset(defaults))
            for signum in default_signals:
                _check(libc.sigaddset(defaults, int(signum)))
            _check(libc.posix_spawnattr_setsigmask(attributes, empty))
            _check(libc.posix_spawnattr_setsigdefault(attributes, defaults))
            _check(libc.posix_spawnattr_setflags(
                attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
                | POSIX_SPAWN_SETSID))
            self._attributes[default_signals] = attributes
        return attributes


def _check(result):
    """posix_spawn's helpers return an errno (sigemptyset and sigaddset -1 and errno)."""
    if result:
        number = result if result > 0 else (_ctypes_errno() or 22)
        raise OSError(number, os.strerror(number))


def _ctypes_errno():
    import ctypes
    return ctypes.get_errno()


def _c_string(value):
    """`value` as the bytes of a C string; ValueError if it holds a NUL, which C would
    take for its end (os.posix_spawn refuses it the same way)."""
    data = os.fsencode(value)
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


def _variable(name, value):
    name = _c_string(name)
    if not name or b"=" in name:
        raise ValueError("illegal environment variable name")
    return name + b"=" + _c_string(value)
