"""Running one configured command with limits: time, output size, its whole process group.

This module starts a process, collects its output and reaps it; it knows nothing about
sockets, keys or JSON. A `Run` is one command driven by the server's event loop; `run` is
the same on a loop of its own, blocking. Both give an `Outcome`, or raise
`RelayError(3002)` when the command could not be started at all.
"""

import errno
import os
import shlex
import signal
import subprocess
import sys
import time

from .eventloop import EVENT_READ, Loop
from .protocol import COMMAND_NOT_STARTED, RelayError

# After SIGTERM, how long a timed-out command's process group gets before SIGKILL.
TERM_GRACE_SECONDS = 2.0
# After the command exits, how long we keep reading pipes that a background child it left
# behind still holds open. The reply must not wait for that child.
EXIT_DRAIN_SECONDS = 0.5
# Without a pidfd, while pipes stay open we cannot tell the command exited from an EOF,
# so we also look at its status at least this often.
STATUS_POLL_SECONDS = 0.05
READ_BYTES = 65536
SHELL = "/bin/sh"
# As PID 1 (a container's init), how often the exited orphans the kernel hands us are
# looked for and reaped.
ORPHAN_REAP_SECONDS = 1.0


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


class Run(object):
    """One command in flight, driven by an `eventloop.Loop` it shares with its owner.

    Creating it starts the command, or raises RelayError(3002) if it cannot start. Its
    output is read and its exit noticed by the loop's callbacks, and `on_done(outcome)`
    is called once, from the loop, when it is over. `timeout` (seconds; None or 0 for
    none) ends the whole process group: SIGTERM, then SIGKILL after TERM_GRACE_SECONDS;
    `cancel()` does the same at once. Output past `max_output` bytes per stream is read
    and dropped.

    If watching the command raises (a bug, or waitpid() failing), the command's group is
    killed and reaped and `on_error()` is called instead of `on_done`, inside the except
    block so it can log the traceback; without `on_error` the exception propagates.
    Either way exactly one of them is called.
    """

    def __init__(self, loop, argv, on_done, timeout=None, max_output=1048576, env=None,
                 cwd=None, on_error=None):
        self.started = time.monotonic()
        self._loop = loop
        self._on_done = on_done
        self._on_error = on_error
        self._reported = False  # on_done or on_error has been called
        self._stdout = _Capture(max_output)
        self._stderr = _Capture(max_output)
        self._open_pipes = {}
        self._deadline = self.started + timeout if timeout else None
        self._kill_at = None
        self._exited_at = None
        self.timed_out = False
        self.done = False
        self._timer = None
        # Nothing left to read but not reaped yet (no pidfd): usually a matter of
        # microseconds, so look again soon, then back off.
        self._reap_wait = 0.0002
        self._exit_fd = None
        self._begin(_start(argv, env, cwd))

    def _begin(self, child):
        """Watches a started child."""
        self._child = child
        self._open_pipes = {child.stdout_fd: self._stdout, child.stderr_fd: self._stderr}
        try:
            for fd in self._open_pipes:
                os.set_blocking(fd, False)
                self._loop.watch(fd, EVENT_READ, self._read)
            self._exit_fd = _exit_descriptor(self._child.pid)
            if self._exit_fd is not None:
                self._loop.watch(self._exit_fd, EVENT_READ, self._exit_seen)
        except BaseException:
            self.abort()
            raise
        self._schedule(time.monotonic())

    def cancel(self):
        """Ends the command's process group as a timeout would (the server stops)."""
        if not self.done and self._exited_at is None and not self.timed_out:
            try:
                self._terminate(time.monotonic())
            except Exception:
                self._failed()
                return
            self._advance()

    def abort(self):
        """Kills and reaps the command and lets go of everything, without an outcome."""
        if not self.done:
            self.done = True
            self._let_go()
            if self._child.returncode is None:
                _signal_group(self._child.pid, signal.SIGKILL)
                _wait_quietly(self._child)

    def _read(self, fd):
        try:
            data = os.read(fd, READ_BYTES)
            if data:
                self._open_pipes[fd].add(data)
                return
            self._loop.unwatch(fd)
            del self._open_pipes[fd]
        except (BlockingIOError, InterruptedError):
            return
        except Exception:
            self._failed()
            return
        self._advance()

    def _exit_seen(self, fd):
        self._loop.unwatch(fd)
        os.close(fd)
        self._exit_fd = None
        self._advance()

    def _advance(self):
        """Looks at the command's state and acts on it; the one place decisions happen."""
        try:
            self._look()
        except Exception:
            self._failed()

    def _failed(self):
        """Watching the command raised (called inside the except block): kills and reaps
        what is left and reports it to `on_error`. An exception from `on_done` or
        `on_error` themselves, or one with no `on_error` to go to, propagates."""
        if self._reported or self._on_error is None:
            raise
        self._reported = True
        self.done = True
        try:
            self._let_go()
        except Exception:
            pass  # the error being reported is the one that matters
        if self._child.returncode is None:
            try:
                _signal_group(self._child.pid, signal.SIGKILL)
            except OSError:
                pass
            _wait_quietly(self._child)
        self._on_error()

    def _look(self):
        if self.done:
            return
        now = time.monotonic()
        child = self._child
        # With a pidfd the exit is an event; without one, every look polls for it.
        if self._exited_at is None and self._exit_fd is None and child.poll() is not None:
            self._exited_at = now
        if self._exited_at is not None and (
                not self._open_pipes or now >= self._exited_at + EXIT_DRAIN_SECONDS):
            self._finish()
            return
        # Only a command still running can time out: one that exited in time has not, even
        # if the deadline passes while its leftovers hold the pipes and we drain them.
        if (not self.timed_out and self._exited_at is None and self._deadline is not None
                and now >= self._deadline):
            self._terminate(now)
        if self._kill_at is not None and now >= self._kill_at:
            _signal_group(child.pid, signal.SIGKILL)
            self._kill_at = None
        self._schedule(now)

    def _schedule(self, now):
        """Sets the timer for the next time `_advance` must look, if any."""
        if self._exited_at is not None:
            when = self._exited_at + EXIT_DRAIN_SECONDS
        else:
            when = None
            if self._exit_fd is None:
                if self._open_pipes:
                    when = now + STATUS_POLL_SECONDS
                else:
                    when = now + self._reap_wait
                    self._reap_wait = min(self._reap_wait * 2, STATUS_POLL_SECONDS)
            if self._kill_at is not None:
                when = _earlier(when, self._kill_at)
            elif self._deadline is not None and not self.timed_out:
                when = _earlier(when, self._deadline)
        if self._timer is not None and not self._timer.cancelled:
            if self._timer.when == when:
                return
            self._timer.cancel()
        self._timer = None if when is None else self._loop.call_at(when, self._advance)

    def _terminate(self, now):
        self.timed_out = True
        _signal_group(self._child.pid, signal.SIGTERM)
        self._kill_at = now + TERM_GRACE_SECONDS

    def _finish(self):
        self.done = True
        self._let_go()
        if self.timed_out:
            # The command is gone; whatever of its group ignored SIGTERM goes now.
            _signal_group(self._child.pid, signal.SIGKILL)
        stdout, stderr = self._stdout, self._stderr
        outcome = Outcome(self._child.returncode, stdout.value(), stderr.value(),
                          bool(stdout.dropped or stderr.dropped), self.timed_out,
                          round((time.monotonic() - self.started) * 1000.0, 1))
        self._reported = True
        self._on_done(outcome)

    def _let_go(self):
        """Stops watching and closes our descriptors."""
        if self._timer is not None:
            self._timer.cancel()
        for fd in self._open_pipes:
            self._loop.unwatch(fd)
        self._open_pipes = {}
        if self._exit_fd is not None:
            self._loop.unwatch(self._exit_fd)
            os.close(self._exit_fd)
            self._exit_fd = None
        self._child.close()


def _earlier(when, other):
    return other if when is None else min(when, other)


def _wait_quietly(child):
    """Reaps `child` after SIGKILL; a child reaped behind our back (ECHILD) is fine."""
    try:
        child.wait()
    except ChildProcessError:
        _commands.discard(child.pid)


def _exit_descriptor(pid):
    """A pidfd that becomes readable when `pid` exits (Linux 5.3+, Python 3.9+), or None:
    then the exit is noticed by polling."""
    if _pidfd_open is None:
        return None
    try:
        return _pidfd_open(pid)
    except OSError:
        return None  # an older kernel, or a sandbox that forbids the call


_pidfd_open = getattr(os, "pidfd_open", None)


def run(argv, timeout=None, max_output=1048576, env=None, cwd=None, cancel=None):
    """Runs `argv` to the end and returns its `Outcome`; raises RelayError(3002) if it
    cannot start. The blocking form of `Run`, on a loop of its own; setting the
    threading.Event `cancel` ends the command like a timeout (noticed within
    STATUS_POLL_SECONDS)."""
    loop = Loop()
    outcomes = []
    command = None
    try:
        command = Run(loop, argv, outcomes.append, timeout, max_output, env, cwd)
        while not outcomes:
            loop.run_once(STATUS_POLL_SECONDS if cancel is not None else None)
            if cancel is not None and cancel.is_set():
                command.cancel()
    finally:
        if command is not None:
            command.abort()  # only does something when running itself failed
        loop.close()
    return outcomes[0]


# The pids of the commands started and not reaped yet: reap_orphans() leaves them alone.
_commands = set()


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
        _commands.add(pid)

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
        if self._popen is not None:
            self.returncode = self._popen.wait()
        elif self.returncode is None:
            self.returncode = _exit_code(os.waitpid(self.pid, 0)[1])
        _commands.discard(self.pid)
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
    """Runs reap_orphans() on `loop` every `seconds`, for as long as the loop runs."""
    def reap():
        try:
            reap_orphans()
        finally:
            loop.call_at(time.monotonic() + seconds, reap)
    loop.call_at(time.monotonic() + seconds, reap)


# How a command starts. os.posix_spawn (3.8+) costs the parent a fraction of Popen's
# CPU time, and the loop does nothing else meanwhile, so it is used whenever it can be:
# it cannot close descriptors or chdir, so only once seal_descriptors() has made every
# inherited descriptor close-on-exec, and never for a command with `cwd`.
_POSIX_SPAWN = sys.version_info >= (3, 8) and hasattr(os, "POSIX_SPAWN_DUP2")
_sealed = False


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


def _start(argv, env, cwd):
    """Starts `argv`; returns the `_Child` or raises RelayError(3002)."""
    try:
        if _POSIX_SPAWN and _sealed and cwd is None:
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
