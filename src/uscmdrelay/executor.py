"""Running one configured command with limits: time, output size, its whole process group.

This module watches a started process: it collects its output up to a cap, notices its
exit, ends its process group at the timeout, and reaps it. Starting it is `spawn`'s job;
sockets, keys and JSON are the server's. A `Run` is one command driven by the server's
event loop; `run` is the same on a loop of its own, blocking. Both give an `Outcome`, or
raise `RelayError(3002)` when the command could not be started at all.
"""

import os
import shlex
import signal
import time

from . import spawn
from .eventloop import EVENT_READ, Loop

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
    never add shell syntax: `; rm -rf /` stays one literal word. A command with
    placeholders (`command.template`) gets each argument in the place of its `$ARGn$`,
    the same way, and none appended.
    """
    template = getattr(command, "template", None)
    if template is not None:
        return [SHELL, "-c", template.shell_line(arguments)] if shell \
            else template.argv(arguments)
    if shell:
        words = [command.line] + [shlex.quote(argument) for argument in arguments]
        return [SHELL, "-c", " ".join(words)]
    return command.argv + list(arguments)


class _Capped(object):
    """Counts one stream's bytes against `limit`: what fits is kept, the rest dropped."""

    __slots__ = ("limit", "size", "dropped")

    def __init__(self, limit):
        self.limit = limit
        self.size = 0
        self.dropped = 0

    def _take(self, data):
        """The part of `data` still within the cap (b"" past it); counts the rest."""
        room = self.limit - self.size
        kept = data[:room] if room > 0 else b""
        self.size += len(kept)
        self.dropped += len(data) - len(kept)
        return kept


class _Capture(_Capped):
    """Keeps the first `limit` bytes of a stream and counts what it dropped."""

    __slots__ = ("chunks",)

    def __init__(self, limit):
        _Capped.__init__(self, limit)
        self.chunks = []

    def add(self, data):
        kept = self._take(data)
        if kept:
            self.chunks.append(kept)

    def value(self):
        return b"".join(self.chunks)


class _Forward(_Capped):
    """Hands the first `limit` bytes of the stream `name` to `emit(name, data)` as they
    are read, and counts what it dropped; keeps nothing."""

    __slots__ = ("name", "emit")

    def __init__(self, limit, name, emit):
        _Capped.__init__(self, limit)
        self.name = name
        self.emit = emit

    def add(self, data):
        kept = self._take(data)
        if kept:
            self.emit(self.name, kept)

    def value(self):
        return b""


class Run(object):
    """One command in flight, driven by an `eventloop.Loop` it shares with its owner.

    Creating it starts the command (`spawn.start`), or raises RelayError(3002) if it
    cannot start. Its output is read and its exit noticed by the loop's callbacks, and
    `on_done(outcome)` is called once, from the loop, when it is over. `timeout`
    (seconds; None or 0 for none) ends the whole process group: SIGTERM, then SIGKILL
    after TERM_GRACE_SECONDS; `cancel()` does the same at once. Output past `max_output`
    bytes per stream is read and dropped.

    With `on_output`, the output is not kept but handed to `on_output(name, data)`
    ("stdout" or "stderr", bytes) as it is read, up to `max_output` bytes per stream
    all the same. `pause_output()` stops reading the pipes (a command that writes more
    then blocks, as on a full terminal), `resume_output()` goes on; the timeout still
    applies, and the 0.5 s a background child's output is read after the exit only
    counts while reading.

    If watching the command raises (a bug, or waitpid() failing), the command's group is
    killed and reaped and `on_error()` is called instead of `on_done`, inside the except
    block so it can log the traceback; without `on_error` the exception propagates.
    Either way exactly one of them is called.
    """

    def __init__(self, loop, argv, on_done, timeout=None, max_output=1048576, env=None,
                 cwd=None, on_error=None, on_output=None):
        self.started = time.monotonic()
        self._loop = loop
        self._on_done = on_done
        self._on_error = on_error
        self._reported = False  # on_done or on_error has been called
        if on_output is None:
            self._stdout = _Capture(max_output)
            self._stderr = _Capture(max_output)
        else:
            self._stdout = _Forward(max_output, "stdout", on_output)
            self._stderr = _Forward(max_output, "stderr", on_output)
        self._paused_at = None  # pause_output() holds the pipes unread since then
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
        self._begin(spawn.start(argv, env, cwd))

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

    def pause_output(self):
        """Stops reading the command's pipes until `resume_output()`."""
        if not self.done and self._paused_at is None:
            self._paused_at = time.monotonic()
            for fd in self._open_pipes:
                self._loop.unwatch(fd)

    def resume_output(self):
        """Reads the command's pipes again after `pause_output()`."""
        if self.done or self._paused_at is None:
            return
        now = time.monotonic()
        if self._exited_at is not None:
            # The time spent paused since the exit does not count against the drain.
            self._exited_at += now - max(self._paused_at, self._exited_at)
        self._paused_at = None
        try:
            for fd in self._open_pipes:
                self._loop.watch(fd, EVENT_READ, self._read)
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
                self._child.signal_group(signal.SIGKILL)
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
                self._child.signal_group(signal.SIGKILL)
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
        if self._exited_at is not None and (not self._open_pipes or (
                self._paused_at is None and now >= self._exited_at + EXIT_DRAIN_SECONDS)):
            self._finish()
            return
        # Only a command still running can time out: one that exited in time has not, even
        # if the deadline passes while its leftovers hold the pipes and we drain them.
        if (not self.timed_out and self._exited_at is None and self._deadline is not None
                and now >= self._deadline):
            self._terminate(now)
        if self._kill_at is not None and now >= self._kill_at:
            child.signal_group(signal.SIGKILL)
            self._kill_at = None
        self._schedule(now)

    def _schedule(self, now):
        """Sets the timer for the next time `_advance` must look, if any."""
        if self._exited_at is not None:
            when = self._exited_at + EXIT_DRAIN_SECONDS
            if self._paused_at is not None:
                when = None  # the drain waits for resume_output()
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
        self._child.signal_group(signal.SIGTERM)
        self._kill_at = now + TERM_GRACE_SECONDS

    def _finish(self):
        self.done = True
        self._let_go()
        if self.timed_out:
            # The command is gone; whatever of its group ignored SIGTERM goes now.
            self._child.signal_group(signal.SIGKILL)
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
        pass


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
