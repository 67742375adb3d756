"""A small event loop: descriptors to watch and timers, driven one round at a time.

The server and every command it runs share one loop in one thread, so nothing needs a
lock and no request waits for a thread to be scheduled. asyncio would do, but costs
start-up time and memory, and its child watchers spend a thread per command.
"""

import heapq
import itertools
import os
import select
import time

# epoll where there is one (Linux), else poll: the same masks, the same four calls. The
# selectors module would do, but costs a few microseconds per call in Python code, on
# the path of every request.
_POLLER = getattr(select, "epoll", None) or select.poll
EVENT_READ = getattr(select, "EPOLLIN", select.POLLIN)
EVENT_WRITE = getattr(select, "EPOLLOUT", select.POLLOUT)
# poll() takes milliseconds, and epoll() seconds.
_TIMEOUT_SCALE = 1.0 if _POLLER is getattr(select, "epoll", None) else 1000.0
# The longest single wait. Both calls raise OverflowError past a C int of milliseconds
# (about 24.8 days; `inf` too) and ValueError for NaN, outside any callback, which would
# end the server (issue 12). Waking once an hour for nothing costs nothing; a longer
# deadline is simply waited for in several rounds.
MAX_WAIT_SECONDS = 3600.0

# Cancelled timers stay in the heap until they come due. With a 60 s command timeout
# and thousands of requests a second that would be a lot of dead entries, so the heap
# is rebuilt once most of it is dead.
_COMPACT_MIN_TIMERS = 256


class Timer(object):
    """A callback due at `when` (time.monotonic()); `cancel()` before then drops it."""

    __slots__ = ("when", "callback", "cancelled", "_loop")

    def __init__(self, loop, when, callback):
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._loop = loop

    def cancel(self):
        if not self.cancelled:
            self.cancelled = True
            self._loop._timer_cancelled()


class Loop(object):
    """Descriptors (`watch`) and timers (`call_at`); `run_once` waits and dispatches.

    A watched descriptor's callback gets the file object; a timer's callback gets no
    argument. Every callback runs in the thread that calls `run_once`; `wake` may be
    called from anywhere (a signal handler, another thread).
    """

    def __init__(self):
        self._poller = _POLLER()
        self._watched = {}  # fd -> (file object, callback)
        self._timers = []  # heap of (when, sequence, Timer)
        self._sequence = itertools.count()
        self._cancelled = 0
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.watch(self._wake_r, EVENT_READ, self._woken)

    def wake(self):
        """Makes a waiting `run_once` return. Safe from any thread or signal handler."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full, so the loop will wake anyway

    def watch(self, fileobj, events, callback):
        """Calls `callback(fileobj)` whenever `fileobj` (a descriptor, or an object with
        fileno()) is ready for `events`, or has an error or hang-up to report."""
        fd = _fileno(fileobj)
        if fd in self._watched:
            raise KeyError("descriptor %d is already watched" % fd)
        self._poller.register(fd, events)
        self._watched[fd] = (fileobj, callback)

    def rewatch(self, fileobj, events, callback):
        """Changes what a watched `fileobj` waits for, or its callback."""
        fd = _fileno(fileobj)
        self._poller.modify(fd, events)
        self._watched[fd] = (fileobj, callback)

    def unwatch(self, fileobj):
        """Stops watching `fileobj`; one that is not watched is fine."""
        fd = _fileno(fileobj)
        if fd < 0:
            # Closed before it was unwatched: find it by identity.
            fd = next((number for number, (watched, _) in self._watched.items()
                       if watched is fileobj), -1)
        if self._watched.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (OSError, KeyError):
                pass  # closed already: the kernel has forgotten it

    def call_at(self, when, callback):
        timer = Timer(self, when, callback)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def run_once(self, timeout=None, on_error=None):
        """Waits up to `timeout` seconds (None: until something happens; at most
        MAX_WAIT_SECONDS, whatever `timeout` or a timer says) and runs what is ready.

        A callback that raises is reported to `on_error(fileobj)` (None for a timer)
        inside the except block, so it can log the traceback; without `on_error` the
        exception propagates."""
        if timeout is not None and not timeout <= MAX_WAIT_SECONDS:  # NaN and inf too
            timeout = MAX_WAIT_SECONDS
        due = self._next_due()
        if due is not None:
            until_due = min(max(0.0, due - time.monotonic()), MAX_WAIT_SECONDS)
            timeout = until_due if timeout is None else min(timeout, until_due)
        if timeout is None:
            timeout = -1
        else:
            # For poll and epoll a negative wait is forever.
            timeout = max(timeout, 0.0) * _TIMEOUT_SCALE
        ready = self._poller.poll(timeout)
        if len(ready) == 1:
            entry = self._watched.get(ready[0][0])
            if entry is not None:
                self._call(entry[1], entry[0], on_error)
        elif ready:
            watched = self._watched
            entries = [(fd, watched.get(fd)) for fd, _ in ready]
            for fd, entry in entries:
                # An earlier callback of this round may have closed this descriptor, and
                # its number may even have been reused: run only what is still watched
                # as it was.
                if entry is not None and watched.get(fd) is entry:
                    self._call(entry[1], entry[0], on_error)
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if timer.cancelled:
                    self._cancelled -= 1
                else:
                    timer.cancelled = True  # it has run: a later cancel() is a no-op
                    self._call(timer.callback, None, on_error)

    def close(self):
        getattr(self._poller, "close", lambda: None)()  # poll objects have none
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _woken(self, fd):
        try:
            os.read(fd, 4096)
        except OSError:
            pass

    def _next_due(self):
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
            self._cancelled -= 1
        return self._timers[0][0] if self._timers else None

    def _timer_cancelled(self):
        self._cancelled += 1
        if (self._cancelled > _COMPACT_MIN_TIMERS
                and self._cancelled * 2 > len(self._timers)):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    @staticmethod
    def _call(callback, fileobj, on_error):
        try:
            if fileobj is None:
                callback()
            else:
                callback(fileobj)
        except Exception:
            if on_error is None:
                raise
            on_error(fileobj)


def _fileno(fileobj):
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()
