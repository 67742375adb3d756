"""Running one configured command with limits: time, output size, its whole process group.

This module starts a process, collects its output and reaps it; it knows nothing about
sockets, keys or JSON. `run` either returns an `Outcome` or raises `RelayError(3002)` when
the command could not be started at all.
"""

import errno
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time

from .protocol import COMMAND_NOT_STARTED, RelayError

# After SIGTERM, how long a timed-out command's process group gets before SIGKILL.
TERM_GRACE_SECONDS = 2.0
# After the command exits, how long we keep reading pipes that a background child it left
# behind still holds open. The reply must not wait for that child.
EXIT_DRAIN_SECONDS = 0.5
# While pipes stay open we cannot tell the command exited from an EOF, so we also look at
# its status at least this often.
STATUS_POLL_SECONDS = 0.05
READ_BYTES = 65536
SHELL = "/bin/sh"


class Outcome(object):
    """What a finished command did.

    `exit_code` (negative: killed by that signal), `stdout` and `stderr` (bytes, at most
    the cap each), `truncated` (some output was dropped), `timed_out`, `duration_ms`.
    """

    __slots__ = ("exit_code", "stdout", "stderr", "truncated", "timed_out", "duration_ms")

    def __init__(self, exit_code, stdout, stderr, truncated, timed_out, duration_ms):
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.truncated = truncated
        self.timed_out = timed_out
        self.duration_ms = duration_ms

    def stdout_text(self):
        return self.stdout.decode("utf-8", "replace")

    def stderr_text(self):
        return self.stderr.decode("utf-8", "replace")


def build_argv(command, arguments, shell=False):
    """Returns the argv that runs a configured `Command` with the client's arguments.

    Without a shell the arguments are argv entries of their own and arrive literally.
    With one, each argument is shlex-quoted onto the configured line, so a client can
    never add shell syntax: `; rm -rf /` stays one literal word.
    """
    if shell:
        words = [command.line] + [shlex.quote(argument) for argument in arguments]
        return [SHELL, "-c", " ".join(words)]
    return command.argv + list(arguments)


class _Capture(object):
    """Keeps the first `limit` bytes of a stream and counts what it dropped."""

    __slots__ = ("limit", "chunks", "size", "dropped")

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.dropped = 0

    def add(self, data):
        room = self.limit - self.size
        if room > 0:
            kept = data[:room]
            self.chunks.append(kept)
            self.size += len(kept)
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self):
        return b"".join(self.chunks)


def run(argv, timeout=None, max_output=1048576, env=None, cwd=None, cancel=None):
    """Runs `argv` and returns its `Outcome`; raises RelayError(3002) if it cannot start.

    The child gets /dev/null as stdin, a session (and process group) of its own, and no
    file descriptor above 2. `timeout` (seconds, None or 0 for none) ends the whole group:
    SIGTERM, then SIGKILL after TERM_GRACE_SECONDS. Setting the threading.Event `cancel`
    does the same at once (noticed within STATUS_POLL_SECONDS). Output past `max_output`
    bytes per stream is read and dropped, so memory stays bounded whatever it prints.
    """
    started = time.monotonic()
    with _starts_lock:
        global _runs
        _runs += 1
        alone = _runs == 1
    try:
        child = _start(argv, env, cwd, alone)
    except BaseException:
        _end_run()
        raise
    try:
        captures, timed_out = _collect(child, started, timeout, max_output, cancel)
    finally:
        _end_run()
        child.close()
        if child.returncode is None:
            # Only reached when collecting itself failed: leave nothing running.
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()
    stdout, stderr = captures
    return Outcome(child.returncode, stdout.value(), stderr.value(),
                   bool(stdout.dropped or stderr.dropped), timed_out,
                   round((time.monotonic() - started) * 1000.0, 1))


class _Child(object):
    """A started command: its `pid`, the read ends of its stdout and stderr pipes, and
    its `returncode` once reaped (negative: killed by that signal)."""

    __slots__ = ("pid", "stdout_fd", "stderr_fd", "returncode", "_popen")

    def __init__(self, pid, stdout_fd, stderr_fd, popen=None):
        self.pid = pid
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.returncode = None
        self._popen = popen

    def poll(self):
        """Reaps the child if it has exited; returns its returncode or None."""
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = _exit_code(status)
        return self.returncode

    def wait(self):
        if self._popen is not None:
            self.returncode = self._popen.wait()
        elif self.returncode is None:
            self.returncode = _exit_code(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def close(self):
        """Closes our ends of the pipes."""
        if self._popen is not None:
            self._popen.stdout.close()
            self._popen.stderr.close()
        else:
            os.close(self.stdout_fd)
            os.close(self.stderr_fd)


def _exit_code(status):
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# How a command starts, measured on 2 cores (see the README's Performance section):
# os.posix_spawn (3.8+) costs the parent a sixth of Popen's CPU, but holds the GIL until
# the child has exec'd, while Popen lets other threads run meanwhile. So posix_spawn is
# used when this is the only command running (lower latency), Popen when others run
# (more throughput: ~11% at 16 clients). posix_spawn cannot close descriptors or chdir:
# it is used only once seal_descriptors() has made every inherited descriptor
# close-on-exec, and never for a command with `cwd`.
_POSIX_SPAWN = sys.version_info >= (3, 8) and hasattr(os, "POSIX_SPAWN_DUP2")
_sealed = False
_starts_lock = threading.Lock()
_runs = 0  # commands being run by this process


def _end_run():
    global _runs
    with _starts_lock:
        _runs -= 1


def seal_descriptors():
    """Marks every open descriptor above 2 close-on-exec, so no command can inherit one.

    Python opens everything close-on-exec (PEP 446); what is left is what our parent
    passed us (a shell's `exec 3>file`, systemd's sockets). Call it once at start-up,
    before serving. Returns True if every descriptor could be checked (/proc exists).
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
# Python ignores these; an exec'd program must get them back at their defaults (Popen's
# restore_signals does the same).
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
                         if hasattr(signal, name))


def _start(argv, env, cwd, alone):
    """Starts `argv`; returns the `_Child` or raises RelayError(3002). `alone`: no other
    command is running."""
    try:
        if alone and _POSIX_SPAWN and _sealed and cwd is None:
            return _posix_spawn(argv, env)
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True, env=env, cwd=cwd)
        return _Child(process.pid, process.stdout.fileno(), process.stderr.fileno(), process)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        if cwd is not None and getattr(error, "filename", None) == cwd:
            raise RelayError(COMMAND_NOT_STARTED, "cannot start %s: working directory %s: "
                             "%s" % (argv[0], cwd, _start_failure(error)))
        if cwd is not None and not os.path.isdir(cwd):
            # Older Pythons do not say which of program and directory is missing.
            raise RelayError(COMMAND_NOT_STARTED, "cannot start %s: working directory %s "
                             "is not a directory" % (argv[0], cwd))
        raise RelayError(COMMAND_NOT_STARTED, "cannot start %s: %s"
                         % (argv[0], _start_failure(error)))


def _posix_spawn(argv, env):
    """Starts `argv` like Popen would (stdin /dev/null, two pipes, a new session).

    No descriptor is closed explicitly: every one this process opens is close-on-exec
    (PEP 446, and socket-activation sockets are made so), so the child keeps only 0-2.
    """
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    try:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, stdout_w, 1),
                   (os.POSIX_SPAWN_DUP2, stderr_w, 2)]
        spawn = os.posix_spawn if os.sep in argv[0] else os.posix_spawnp
        pid = spawn(argv[0], argv, os.environ if env is None else env,
                    file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                    setsigmask=())
    except BaseException:
        os.close(stdout_r)
        os.close(stderr_r)
        raise
    finally:
        os.close(stdout_w)
        os.close(stderr_w)
    return _Child(pid, stdout_r, stderr_r)


def _collect(process, started, timeout, max_output, cancel):
    stdout, stderr = _Capture(max_output), _Capture(max_output)
    open_pipes = {process.stdout_fd: stdout, process.stderr_fd: stderr}
    poller = select.poll()
    for fd in open_pipes:
        poller.register(fd, select.POLLIN)
    deadline = started + timeout if timeout else None
    kill_at = None
    exited_at = None
    timed_out = False
    # Nothing left to read but not reaped yet: usually a matter of microseconds, so look
    # again soon, then back off.
    reap_wait = 0.0002
    while True:
        now = time.monotonic()
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None and (not open_pipes or now >= exited_at + EXIT_DRAIN_SECONDS):
            break
        # Only a command still running can time out: one that exited in time has not, even
        # if the deadline passes while its leftovers hold the pipes and we drain them.
        if not timed_out and exited_at is None and (
                (deadline is not None and now >= deadline)
                or (cancel is not None and cancel.is_set())):
            timed_out = True
            _signal_group(process.pid, signal.SIGTERM)
            kill_at = now + TERM_GRACE_SECONDS
        if kill_at is not None and now >= kill_at:
            _signal_group(process.pid, signal.SIGKILL)
            kill_at = None
        poller_wait = _next_wait(now, open_pipes, exited_at, deadline, timed_out, kill_at,
                                 reap_wait)
        if not open_pipes and exited_at is None:
            reap_wait = min(reap_wait * 2, STATUS_POLL_SECONDS)
        for fd, _ in poller.poll(poller_wait * 1000.0):
            data = os.read(fd, READ_BYTES)
            if data:
                open_pipes[fd].add(data)
            else:
                poller.unregister(fd)
                del open_pipes[fd]
    if timed_out:
        # The command is gone; whatever of its group ignored SIGTERM goes now.
        _signal_group(process.pid, signal.SIGKILL)
    return (stdout, stderr), timed_out


def _next_wait(now, open_pipes, exited_at, deadline, timed_out, kill_at, reap_wait):
    """Seconds the poller may sleep before something needs looking at."""
    if exited_at is not None:
        return max(0.0, exited_at + EXIT_DRAIN_SECONDS - now)
    wait = STATUS_POLL_SECONDS if open_pipes else reap_wait
    if kill_at is not None:
        wait = min(wait, kill_at - now)
    elif deadline is not None and not timed_out:
        wait = min(wait, deadline - now)
    return max(0.0, wait)


def _signal_group(pgid, signum):
    """Signals a whole process group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signum)
    except OSError as error:
        if error.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _start_failure(error):
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
