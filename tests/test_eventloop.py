"""Tests for uscmdrelay.eventloop.Loop with real pipes, sockets and threads; nothing mocked.

Every wait is bounded: the loop is driven by `drive`, which fails the test at a deadline,
and a loop that might block for good runs in a daemon thread joined with a timeout.
"""

import os
import socket
import sys
import threading
import time
import unittest

import tests  # noqa: F401  (puts src/ on sys.path)
from uscmdrelay import eventloop
from uscmdrelay.eventloop import EVENT_READ, Loop

# How long anything we wait for may take before the test fails instead of hanging.
DEADLINE_SECONDS = 20.0
# How long a joined thread gets; a loop that was never woken is still blocked after it.
JOIN_SECONDS = 5.0
ROUND_SECONDS = 0.05


class LoopTestCase(unittest.TestCase):

    def setUp(self):
        self.loop = Loop()
        self.loop_stuck = False  # a thread still waits on it: leave it open
        self._closed = set()
        self.addCleanup(self.close_loop)

    def close_loop(self):
        if not self.loop_stuck:
            self.loop.close()

    def drive(self, done, on_error=None, limit=DEADLINE_SECONDS):
        """Runs the loop a round at a time until `done()` is true; fails at `limit` s."""
        deadline = time.monotonic() + limit
        while not done():
            if time.monotonic() >= deadline:
                self.fail("not done after %.0f s" % limit)
            self.loop.run_once(ROUND_SECONDS, on_error)

    def pipe(self):
        """A pipe (read end, write end), closed in cleanup unless `close_fd` closed it."""
        read_end, write_end = os.pipe()
        for fd in (read_end, write_end):
            self.addCleanup(self.close_fd, fd)
        return read_end, write_end

    def readable_pipe(self):
        read_end, write_end = self.pipe()
        os.write(write_end, b"x")
        return read_end

    def close_fd(self, fd):
        """Closes `fd` once: a test that closed it already is fine."""
        if fd not in self._closed:
            self._closed.add(fd)
            os.close(fd)

    def reopen_fd(self, fd):
        """`fd` was closed and has been opened again: cleanup must close it once more."""
        self._closed.discard(fd)
        self.addCleanup(self.close_fd, fd)


class Timers(LoopTestCase):

    def test_timers_fire_in_time_order_and_not_before_their_time(self):
        now = time.monotonic()
        fired = []
        # Added out of order, so the order they fire in comes from their times.
        for name, delay in (("third", 0.15), ("first", 0.05), ("second", 0.10)):
            when = now + delay
            self.loop.call_at(
                when, lambda name=name, when=when: fired.append((name, when, time.monotonic())))
        self.drive(lambda: len(fired) == 3)
        self.assertEqual([name for name, _, _ in fired], ["first", "second", "third"])
        for name, when, ran in fired:
            self.assertGreaterEqual(ran, when, "%s ran before its time" % name)

    def test_timers_due_at_the_same_time_fire_in_the_order_they_were_added(self):
        when = time.monotonic()
        fired = []
        for number in range(5):
            self.loop.call_at(when, lambda number=number: fired.append(number))
        self.drive(lambda: len(fired) == 5)
        self.assertEqual(fired, [0, 1, 2, 3, 4])

    def test_a_cancelled_timer_never_fires(self):
        now = time.monotonic()
        fired = []
        self.loop.call_at(now + 0.05, lambda: fired.append("cancelled")).cancel()
        self.loop.call_at(now + 0.15, lambda: fired.append("kept"))
        self.drive(lambda: "kept" in fired)
        self.loop.run_once(0)
        self.assertEqual(fired, ["kept"])

    def test_cancel_after_firing_is_harmless(self):
        fired = []
        timer = self.loop.call_at(time.monotonic(), lambda: fired.append("first"))
        self.drive(lambda: fired)
        # A timer that has run counts as cancelled (Run._schedule reads `cancelled` to
        # know whether its timer is still pending), so cancelling it counts nothing.
        self.assertTrue(timer.cancelled)
        timer.cancel()
        timer.cancel()
        self.loop.call_at(time.monotonic(), lambda: fired.append("next"))
        self.drive(lambda: "next" in fired)
        self.assertEqual(fired, ["first", "next"])

    def test_many_cancelled_timers_do_not_stay_in_the_heap(self):
        # The heap is private, but its size is the whole point here: cancelled timers that
        # are never due (a command's 60 s timeout, cancelled as it finishes) must not pile
        # up, and no public API could tell. The bound is loose: any compaction at all
        # keeps it far below the 5000 timers cancelled.
        bound = 4 * eventloop._COMPACT_MIN_TIMERS + 8
        far = time.monotonic() + 3600
        fired = []
        live = self.loop.call_at(time.monotonic() + 0.05, lambda: fired.append("live"))
        largest = 0
        for _ in range(5000):
            self.loop.call_at(far, lambda: fired.append("cancelled")).cancel()
            largest = max(largest, len(self.loop._timers))
        self.assertLessEqual(largest, bound)
        self.assertFalse(live.cancelled)
        self.drive(lambda: fired)
        self.assertEqual(fired, ["live"])

    def test_cancelling_a_batch_of_pending_timers_shrinks_the_heap(self):
        # All added first, then all cancelled: the other way the heap fills (see above).
        far = time.monotonic() + 3600
        timers = [self.loop.call_at(far, lambda: None) for _ in range(5000)]
        for timer in timers:
            timer.cancel()
        self.assertLessEqual(len(self.loop._timers), 4 * eventloop._COMPACT_MIN_TIMERS)


class Descriptors(LoopTestCase):

    def test_a_watched_pipe_s_callback_gets_the_descriptor(self):
        read_end = self.readable_pipe()
        seen = []
        self.loop.watch(read_end, EVENT_READ, seen.append)
        self.drive(lambda: seen)
        self.assertEqual(seen[0], read_end)

    def test_a_watched_socket_s_callback_gets_the_same_socket_object(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        theirs.sendall(b"x")
        seen = []
        self.loop.watch(ours, EVENT_READ, seen.append)
        self.drive(lambda: seen)
        self.assertIs(seen[0], ours)

    def test_rewatch_changes_the_callback(self):
        read_end = self.readable_pipe()
        seen = []
        self.loop.watch(read_end, EVENT_READ, lambda fd: seen.append("old"))
        self.loop.rewatch(read_end, EVENT_READ, lambda fd: seen.append("new"))
        self.drive(lambda: seen)
        self.assertEqual(seen[0], "new")

    def test_unwatch_of_a_descriptor_never_watched_or_already_unwatched_is_fine(self):
        read_end = self.readable_pipe()
        self.loop.unwatch(read_end)
        self.loop.watch(read_end, EVENT_READ, lambda fd: self.fail("unwatched, yet called"))
        self.loop.unwatch(read_end)
        self.loop.unwatch(read_end)
        self.loop.run_once(0)

    def test_a_descriptor_closed_earlier_in_the_round_gets_no_stale_callback(self):
        # Both pipes are readable, so one select returns both. Whichever callback runs
        # first unwatches and closes the other pipe; that one's event is stale and must
        # not be dispatched (its descriptor is gone, or is someone else's by now).
        first, second = self.readable_pipe(), self.readable_pipe()
        ran = []

        def closes(other):
            def callback(fd):
                ran.append(fd)
                self.loop.unwatch(other)
                self.close_fd(other)
            return callback
        self.loop.watch(first, EVENT_READ, closes(second))
        self.loop.watch(second, EVENT_READ, closes(first))
        self.loop.run_once(DEADLINE_SECONDS)
        self.assertEqual(len(ran), 1, "both callbacks ran: %r" % ran)

    def test_a_reused_descriptor_number_gets_no_stale_event_of_its_old_owner(self):
        # As above, but the closed number is at once reused by a new, idle pipe that is
        # watched: the round's stale event must reach neither the old nor the new callback.
        first, second = self.readable_pipe(), self.readable_pipe()
        ran = []

        def replace(other):
            def callback(fd):
                ran.append(fd)
                self.loop.unwatch(other)
                self.close_fd(other)
                idle_read, _ = self.pipe()
                os.dup2(idle_read, other)  # the same number, now an idle pipe
                self.reopen_fd(other)
                self.loop.watch(other, EVENT_READ, lambda fd: ran.append(("newcomer", fd)))
            return callback
        self.loop.watch(first, EVENT_READ, replace(second))
        self.loop.watch(second, EVENT_READ, replace(first))
        self.loop.run_once(DEADLINE_SECONDS)
        self.assertEqual(len(ran), 1, "a stale event was dispatched: %r" % ran)


class Errors(LoopTestCase):

    def test_on_error_gets_the_descriptor_or_none_for_a_timer_and_the_loop_goes_on(self):
        read_end = self.readable_pipe()
        errors = []
        ran = []

        def on_error(fileobj):
            errors.append((fileobj, sys.exc_info()[1]))

        def failing(*_):
            raise ValueError("broken callback")
        self.loop.watch(read_end, EVENT_READ, failing)
        now = time.monotonic()
        self.loop.call_at(now, failing)
        self.loop.call_at(now, lambda: ran.append("timer after the failing one"))
        self.loop.run_once(DEADLINE_SECONDS, on_error)
        self.assertEqual([fileobj for fileobj, _ in errors], [read_end, None])
        for _, error in errors:
            self.assertIsInstance(error, ValueError)
        self.assertEqual(ran, ["timer after the failing one"])
        self.loop.unwatch(read_end)
        self.loop.call_at(time.monotonic(), lambda: ran.append("next round"))
        self.drive(lambda: "next round" in ran, on_error)
        self.assertEqual(len(errors), 2)

    def test_without_on_error_the_exception_propagates(self):
        def failing(*_):
            raise ValueError("broken callback")
        read_end = self.readable_pipe()
        self.loop.watch(read_end, EVENT_READ, failing)
        with self.assertRaises(ValueError):
            self.loop.run_once(DEADLINE_SECONDS)
        self.loop.unwatch(read_end)
        self.loop.call_at(time.monotonic(), failing)
        with self.assertRaises(ValueError):
            self.loop.run_once(DEADLINE_SECONDS)


class Waking(LoopTestCase):

    def start_one_round_in_a_thread(self):
        """Runs `run_once(None)` in a daemon thread, so that a loop never woken fails a
        join instead of hanging the suite; returns the thread."""
        looper = threading.Thread(target=self.loop.run_once, name="test-loop")
        looper.daemon = True
        looper.start()
        time.sleep(0.1)  # let it get into its wait (it must be woken either way)
        return looper

    def assertRoundEnds(self, looper, message):
        looper.join(JOIN_SECONDS)
        if looper.is_alive():
            # Closing the loop under a thread still waiting on it would be worse than
            # leaking one blocked daemon thread of a failed test.
            self.loop_stuck = True
            self.fail(message)

    def test_wake_from_another_thread_ends_a_wait_without_a_timeout(self):
        looper = self.start_one_round_in_a_thread()
        self.loop.wake()
        self.assertRoundEnds(looper, "run_once(None) was not woken by wake()")


class _RecordingPoller(object):
    """The loop's real poller, noting the wait it is given (private, but the wait is
    what issue 12 is about, and no public API shows it)."""

    def __init__(self, poller):
        self.poller = poller
        self.waits = []

    def poll(self, timeout):
        self.waits.append(timeout)
        return self.poller.poll(timeout)

    def __getattr__(self, name):
        return getattr(self.poller, name)


class LongWaits(LoopTestCase):
    """Issue 12: epoll.poll() and poll.poll() raise OverflowError past ~24.8 days (or for
    inf) and ValueError for NaN, which once ended the server. No wait can now."""

    HUGE = (1e12, float("inf"), float("nan"), 2592000.0, 3000000.0)

    def test_a_huge_infinite_or_nan_timeout_does_not_raise(self):
        read_end = self.readable_pipe()
        ran = []
        self.loop.watch(read_end, EVENT_READ, ran.append)
        for timeout in self.HUGE:
            with self.subTest(timeout=timeout):
                del ran[:]
                self.loop.run_once(timeout)  # the pipe is readable: no real wait
                self.assertEqual(ran, [read_end])

    def test_a_timer_due_in_a_very_long_time_does_not_raise(self):
        read_end = self.readable_pipe()
        ran = []
        self.loop.watch(read_end, EVENT_READ, ran.append)
        fired = []
        for delay in self.HUGE[:2] + self.HUGE[3:]:
            self.loop.call_at(time.monotonic() + delay, lambda: fired.append("far"))
        for timeout in (None,) + self.HUGE:
            with self.subTest(timeout=timeout):
                del ran[:]
                self.loop.run_once(timeout)
                self.assertEqual(ran, [read_end])
        self.assertEqual(fired, [])

    def test_the_wait_given_to_poll_is_at_most_an_hour_and_never_negative(self):
        recorder = _RecordingPoller(self.loop._poller)
        self.loop._poller = recorder
        read_end = self.readable_pipe()
        self.loop.watch(read_end, EVENT_READ, lambda fd: None)
        self.loop.run_once(-5)
        for timeout in self.HUGE:
            self.loop.run_once(timeout)
        self.loop.call_at(time.monotonic() + 1e12, lambda: None)
        self.loop.run_once(None)
        scale = eventloop._TIMEOUT_SCALE
        self.assertEqual(eventloop.MAX_WAIT_SECONDS, 3600.0)
        self.assertEqual(recorder.waits[0], 0.0)
        for wait in recorder.waits[1:]:
            self.assertEqual(wait, 3600.0 * scale)


if __name__ == "__main__":
    unittest.main()
