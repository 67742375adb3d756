"""Starting a command's process, and reaping processes that are not ours to watch.

`start` gives a `Child`: the process runs in a session of its own, with stdin on
/dev/null, stdout and stderr on pipes, descriptors 0-2 only and default dispositions for
the signals Python ignores; or it raises `RelayError(3002)` saying why it could not start.
Watching a child (its output, its exit, its timeout) is `executor`'s job, not this one's.

The orphan reaper lives here too because it must know every pid `start` gave out and not
reaped yet, and `Child` is what keeps that set.
"""

import errno
import os
import signal
import subprocess
import sys
import time

from .codes import COMMAND_NOT_STARTED, RelayError
from .reasons import reason

# As PID 1 (a container's init), how often the exited orphans the kernel hands us are
# looked for and reaped.
ORPHAN_REAP_SECONDS = 1.0

# Python ignores these; an exec'd program must get them back at their defaults. Popen's
# restore_signals resets exactly these three (every Python 3), and the posix_spawn path
# resets the same ones, so both give a command the same dispositions. Any other signal
# is inherited as the server has it: the service resets the ignored ones at start-up.
# (One difference no Python can undo: glibc's posix_spawn leaves its two internal
# signals, 32 and 33, ignored in the child; glibc programs handle both themselves.)
DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
                        if hasattr(signal, name))

# How a command starts. posix_spawn costs the parent a fraction of Popen's CPU time, and
# the loop does nothing else meanwhile, so it is used whenever it can be: os.posix_spawn
# (3.8+), else the C library's through ctypes (libc_spawn: 3.6, 3.7, PyPy). It cannot
# close descriptors or chdir, so only once seal_descriptors() has made every inherited
# descriptor close-on-exec, and never for a command with `cwd`. _POSIX_SPAWN False (a
# test's switch) takes Popen.
_OS_POSIX_SPAWN = sys.version_info >= (3, 8) and hasattr(os, "POSIX_SPAWN_DUP2")
_POSIX_SPAWN = True
_sealed = False

# The pids of the commands started and not reaped yet: reap_orphans() leaves them alone.
_commands = set()


def seal_descriptors():
    """Marks every open descriptor above 2 close-on-exec, so no command can inherit one.

    Python opens everything close-on-exec (PEP 446); what is left is what our parent
    passed us (a shell's `exec 3>file`, systemd's sockets). A process-wide act: call it
    once at start-up, after adopting inherited sockets and before starting any command.
    Returns True if every descriptor could be checked (/proc exists); only then does
    `start` use posix_spawn.
    """
    global _sealed
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed by now
    _sealed = True
    return True


def sealed():
    """True once seal_descriptors() has sealed this process's descriptors."""
    return _sealed


def posix_spawn_available():
    """True if this interpreter can start commands with posix_spawn: os.posix_spawn, or
    the C library's through ctypes."""
    if _OS_POSIX_SPAWN:
        return True
    from . import libc_spawn  # only where it is needed: compiling it costs start-up time
    return libc_spawn.load() is not None


def uses_posix_spawn(cwd=None):
    """True if `start` would use posix_spawn for a command with this `cwd`."""
    return _POSIX_SPAWN and _sealed and cwd is None and posix_spawn_available()


def start(argv, env=None, cwd=None):
    """Starts `argv` (with environment `env`, default ours, in directory `cwd`); returns
    its `Child`, or raises RelayError(3002) with a one-line reason."""
    try:
        if uses_posix_spawn(cwd):
            return _posix_spawn(argv, env)
        return _popen(argv, env, cwd)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        raise _not_started(argv[0], cwd, error)


class Child(object):
    """A started command: its `pid` (also its process group's and session's id), the
    read ends of its stdout and stderr pipes, and its `returncode` once reaped (negative:
    killed by that signal). `method` says how it was started: "posix_spawn" or "Popen"."""

    __slots__ = ("pid", "stdout_fd", "stderr_fd", "returncode", "_popen")

    def __init__(self, pid, stdout_fd, stderr_fd, popen=None):
        self.pid = pid
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.returncode = None
        self._popen = popen
        _commands.add(pid)

    @property
    def method(self):
        return "posix_spawn" if self._popen is None else "Popen"

    def poll(self):
        """Reaps the child if it has exited; returns its returncode or None."""
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = _exit_code(status)
            if self.returncode is not None:
                _commands.discard(self.pid)
        return self.returncode

    def wait(self):
        """Reaps the child, waiting for it to exit; returns its returncode. Raises
        ChildProcessError if it was reaped behind our back (then it is not ours any more)."""
        try:
            if self._popen is not None:
                self.returncode = self._popen.wait()
            elif self.returncode is None:
                self.returncode = _exit_code(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:
            _commands.discard(self.pid)
            raise
        _commands.discard(self.pid)
        return self.returncode

    def signal_group(self, signum):
        """Signals the child's whole process group; a group that is already gone is
        fine."""
        try:
            os.killpg(self.pid, signum)
        except OSError as error:
            if error.errno not in (errno.ESRCH, errno.EPERM):
                raise

    def close(self):
        """Closes our ends of the pipes."""
        if self._popen is not None:
            self._popen.stdout.close()
            self._popen.stderr.close()
        else:
            os.close(self.stdout_fd)
            os.close(self.stderr_fd)


def _exit_code(status):
    """The returncode of a wait status: the exit status, or minus the killing signal."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _popen(argv, env, cwd):
    """Starts `argv` with Popen (which resets DEFAULT_SIGNALS: restore_signals)."""
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        close_fds=True, start_new_session=True, env=env, cwd=cwd)
    return Child(process.pid, process.stdout.fileno(), process.stderr.fileno(), process)


def _posix_spawn(argv, env):
    """Starts `argv` like `_popen` would (stdin /dev/null, two pipes, a new session, the
    same signals reset, an empty signal mask).

    No descriptor is closed explicitly: every one this process opens is close-on-exec
    (PEP 446, and seal_descriptors() made the inherited ones so), so the child keeps
    only 0-2.
    """
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    env = os.environ if env is None else env
    search = os.sep not in argv[0]  # posix_spawnp: a bare name is looked up in PATH
    try:
        if _OS_POSIX_SPAWN:
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, stdout_w, 1),
                       (os.POSIX_SPAWN_DUP2, stderr_w, 2)]
            spawn = os.posix_spawnp if search else os.posix_spawn
            pid = spawn(argv[0], argv, env, file_actions=actions, setsid=True,
                        setsigdef=DEFAULT_SIGNALS, setsigmask=())
        else:
            from . import libc_spawn
            pid = libc_spawn.load().spawn(argv, env, stdout_w, stderr_w, DEFAULT_SIGNALS,
                                          search)
    except BaseException:
        os.close(stdout_r)
        os.close(stderr_r)
        raise
    finally:
        os.close(stdout_w)
        os.close(stderr_w)
    return Child(pid, stdout_r, stderr_r)


def _not_started(program, cwd, error):
    """The RelayError(3002) for `program` that could not start because of `error`."""
    if cwd is not None and getattr(error, "filename", None) == cwd:
        return RelayError(COMMAND_NOT_STARTED, "cannot start %s: working directory %s: %s"
                          % (program, cwd, _start_failure(error)))
    if cwd is not None and not os.path.isdir(cwd):
        # Older Pythons do not say which of program and directory is missing.
        return RelayError(COMMAND_NOT_STARTED, "cannot start %s: working directory %s is "
                          "not a directory" % (program, cwd))
    return RelayError(COMMAND_NOT_STARTED, "cannot start %s: %s"
                      % (program, _start_failure(error)))


def _start_failure(error):
    """The reason in `error`, the same on every Python."""
    if isinstance(error, OSError) and error.strerror:
        # Python 3.6 and 3.7 append ": '<file name>'" to ENOENT's strerror (3.8+ do not);
        # our message names the file already.
        suffix = ": %r" % (error.filename,)
        if error.filename is not None and error.strerror.endswith(suffix):
            return error.strerror[:-len(suffix)]
    return reason(error)


def reap_orphans():
    """Reaps the exited children of this process that are not commands it runs; returns
    their pids.

    As PID 1 (a container's init) the kernel makes us the parent of every orphan, such
    as what a command left in the background; nobody else would reap them, and each
    would stay a zombie. waitpid(-1) would also steal our own commands' exit statuses,
    so each zombie child is found in /proc and only one that is not a command is reaped
    (a zombie's pid cannot be reused until it is reaped). Call it from the thread that
    starts commands. Without /proc (not Linux) it reaps nothing.
    """
    me = os.getpid()
    reaped = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return reaped
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in _commands or pid == me:
            continue
        try:
            fd = os.open("/proc/%s/stat" % name, os.O_RDONLY)
            try:
                text = os.read(fd, 1024)
            finally:
                os.close(fd)
        except OSError:
            continue  # gone meanwhile
        # The command name in parentheses may hold spaces and parentheses itself.
        fields = text.rsplit(b")", 1)[-1].split()
        if len(fields) < 2 or fields[0] != b"Z" or fields[1] != str(me).encode():
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                reaped.append(pid)
        except ChildProcessError:
            pass
    return reaped


def reap_orphans_every(loop, seconds=ORPHAN_REAP_SECONDS):
    """Runs reap_orphans() on `loop` (an eventloop.Loop) every `seconds`, for as long as
    the loop runs."""
    def reap():
        try:
            reap_orphans()
        finally:
            loop.call_at(time.monotonic() + seconds, reap)
    loop.call_at(time.monotonic() + seconds, reap)
