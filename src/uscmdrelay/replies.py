"""Writing replies: each as its client takes it, then closing without destroying it.

A `ReplyWriter` writes a reply (an iterable of bytes) to a non-blocking socket on the
server's event loop, within a deadline, whatever the size of the reply and however slowly
the client reads: nothing here ever blocks the loop. Once the reply is out it sends TLS
close_notify (with TLS), half-closes the connection and lingers a moment before closing,
so that the kernel does not answer unread client bytes with an RST that destroys the
reply in flight.

A reply may also be a `Stream`: lines handed over as they come (a command's output
while it runs), then the last one. Its unsent bytes are counted, so that whoever feeds it
can stop while the client is slow, and be told when it has caught up.

It knows nothing of requests, configurations or commands: the server hands it a socket
and bytes, and learns from `on_done` when the connection no longer counts against its
limits.
"""

import collections
import socket
import time

from .eventloop import EVENT_READ, EVENT_WRITE

SEND_BYTES = 65536
# After the reply, how long we wait for the client to close before we do. Closing a socket
# with unread input makes the kernel send RST, which can destroy the reply in flight.
LINGER_SECONDS = 1.0
LINGER_RECV_BYTES = 65536


class Stream(object):
    """An open-ended reply, handed to `ReplyWriter.send` in place of a finished one:
    `write(data)` adds bytes as they come, `end(pieces)` adds the last and lets the
    connection close as after any reply. `unsent` is how many bytes the client has not
    taken yet; `when_below(limit, callback)` calls `callback()` once they are `limit` or
    fewer. `on_gone()` is called once if the connection is lost before the end (a reset,
    a write error, no progress within the writer's timeout, `close_all`); then `gone`
    is true and whatever is written is dropped.
    """

    __slots__ = ("on_gone", "gone", "ended", "unsent", "_queue", "_below", "_wake")

    def __init__(self, on_gone=None):
        self.on_gone = on_gone
        self.gone = False
        self.ended = False
        self.unsent = 0
        self._queue = collections.deque()
        self._below = None  # (limit, callback)
        self._wake = None   # set by the writer: writes what was added

    def write(self, data):
        """Adds `data` (bytes) to send; nothing once the stream ended or is gone."""
        if self.gone or self.ended or not data:
            return
        self._queue.append(data)
        self.unsent += len(data)
        if self._wake is not None:
            self._wake()

    def end(self, pieces):
        """Adds the last bytes (an iterable), after which the connection closes."""
        if self.gone or self.ended:
            return
        for piece in pieces:
            self._queue.append(piece)
            self.unsent += len(piece)
        self.ended = True
        if self._wake is not None:
            self._wake()

    def when_below(self, limit, callback):
        """Calls `callback()` once `unsent` is `limit` or fewer (at once if it is)."""
        self._below = (limit, callback)
        self._sent(0)

    def __iter__(self):
        return self

    def __next__(self):
        """The next piece to send; StopIteration while nothing waits (for now)."""
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()

    def _sent(self, count):
        self.unsent -= count
        if self._below is not None and self.unsent <= self._below[0]:
            callback = self._below[1]
            self._below = None
            callback()

    def _lost(self):
        if not self.ended and not self.gone:
            self.gone = True
            self._queue.clear()
            self._below = None
            if self.on_gone is not None:
                self.on_gone()


class _Reply(object):
    """A reply being written: the rest of its `pieces` (bytes), the `chunk` in flight,
    the `deadline` for all of it (for a `stream`, for progress), `watched`: its socket
    is on the loop, and `on_done(sock)`, called once by `release`."""

    __slots__ = ("pieces", "chunk", "deadline", "close_notify_sent", "on_done", "stream",
                 "watched")

    def __init__(self, pieces, deadline, on_done):
        self.stream = pieces if isinstance(pieces, Stream) else None
        self.pieces = iter(pieces)
        self.chunk = None
        self.deadline = deadline
        self.close_notify_sent = False
        self.on_done = on_done
        self.watched = False

    def next_chunk(self):
        """The next SEND_BYTES or so of the reply, or None at its end. A chunk is kept
        until it is all sent: a TLS write that would block must be retried as it was."""
        parts = []
        size = 0
        for piece in self.pieces:
            parts.append(piece)
            size += len(piece)
            if size >= SEND_BYTES:
                break
        return memoryview(b"".join(parts)) if size else None

    def release(self, sock):
        """Calls `on_done(sock)` the first time only."""
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(sock)


class ReplyWriter(object):
    """Writes replies on `loop` (an eventloop.Loop): each within `timeout` seconds of
    `send`, then lingers up to `linger` seconds, never more than `max_lingering`
    connections at once (past that they close at once: closing beats running out of
    descriptors). `tls`: the sockets are ssl sockets, which end with close_notify.
    """

    def __init__(self, loop, timeout, max_lingering, tls=False, linger=LINGER_SECONDS):
        self._loop = loop
        self._timeout = timeout
        self._max_lingering = max_lingering
        self._linger = linger
        self._tls = tls
        self._would_block = (BlockingIOError, InterruptedError)
        self._want_read = ()  # what says a TLS write must wait for the socket to read
        if tls:
            from . import tls as tls_module
            self._would_block += tls_module.WOULD_BLOCK
            self._want_read = tls_module.WOULD_BLOCK[0]
        # Each table is in deadline order, since its entries all get the same allowance.
        self._sending = collections.OrderedDict()    # sock -> _Reply
        self._lingering = collections.OrderedDict()  # sock -> close deadline
        self._streams_idle = {}  # sock -> _Reply of a Stream with nothing to send now

    @property
    def sending(self):
        """How many replies wait for their client to take more."""
        return len(self._sending)

    @property
    def lingering(self):
        """How many connections, their reply written, wait for their client to close."""
        return len(self._lingering)

    def send(self, sock, pieces, on_done=None):
        """Writes `pieces` (an iterable of bytes) to `sock` as its client takes it, then
        closes the connection without destroying the reply; the writer owns `sock` from
        now on. `on_done(sock)` is called exactly once, when the connection stops
        counting: the reply is out, it failed, its deadline passed, or `close_all`. An
        exception from `pieces` (a bug) closes the connection, then propagates.

        `pieces` may be a `Stream`, written as it fills until its end. Its deadline is
        one of progress: the client must take a byte within the timeout of the moment
        one waits for it (and any time the stream is idle is not counted), or the
        connection is dropped as gone."""
        reply = _Reply(pieces, time.monotonic() + self._timeout, on_done)
        if reply.stream is not None:
            reply.stream._wake = lambda: self._stream_wake(sock, reply)
        try:
            self._write(sock, reply)  # most replies fit in the socket's buffer
        except Exception:
            self._drop(sock, reply)
            raise

    def next_deadline(self):
        """The time.monotonic() at which `expire` has something to do, or None."""
        deadline = None
        if self._sending:
            deadline = next(iter(self._sending.values())).deadline
        if self._lingering:
            linger = next(iter(self._lingering.values()))
            if deadline is None or linger < deadline:
                deadline = linger
        return deadline

    def expire(self, now):
        """Drops the replies not taken by `now`, closes the connections lingering since."""
        while self._sending:
            sock, reply = next(iter(self._sending.items()))
            if reply.deadline > now:
                break
            self._drop(sock, reply)  # a client that does not read its reply loses it
        while self._lingering:
            sock, deadline = next(iter(self._lingering.items()))
            if deadline > now:
                break
            self._end_linger(sock)

    def close_all(self):
        """Closes every connection the writer holds (the replies still being written are
        lost)."""
        for sock in list(self._sending):
            self._drop(sock, self._sending[sock])
        for sock in list(self._streams_idle):
            self._drop(sock, self._streams_idle[sock])
        for sock in list(self._lingering):
            self._end_linger(sock)

    def _write_ready(self, sock):
        reply = self._sending[sock]
        try:
            self._write(sock, reply)
        except Exception:
            self._drop(sock, reply)
            raise

    def _stream_wake(self, sock, reply):
        """A stream got more to send: writes it now unless it waits for the socket."""
        if sock not in self._sending:
            try:
                self._write(sock, reply)
            except Exception:
                self._drop(sock, reply)
                raise

    def _stream_hung_up(self, sock):
        """An idle stream's connection has an error (a reset) or is closed both ways."""
        self._drop(sock, self._streams_idle.pop(sock))

    def _watch(self, sock, reply, events, callback):
        if reply.watched:
            self._loop.rewatch(sock, events, callback)
        else:
            self._loop.watch(sock, events, callback)
            reply.watched = True

    def _write(self, sock, reply):
        """Writes what the socket takes now; waits for it to take more, or (a stream)
        for more to send, or lets the connection linger once the reply is out."""
        stream = reply.stream
        try:
            while True:
                if not reply.chunk:
                    reply.chunk = reply.next_chunk()
                    if reply.chunk is None:
                        break
                sent = sock.send(reply.chunk)
                reply.chunk = reply.chunk[sent:]
                if stream is not None and sent:
                    self._progress(sock, reply, sent)
            if stream is not None and not stream.ended:
                # All out for now: wait for more, watching only for the client going away
                # (errors and hang-ups are reported whatever the mask).
                self._sending.pop(sock, None)
                self._streams_idle[sock] = reply
                self._watch(sock, reply, 0, self._stream_hung_up)
                return
            if self._tls and not reply.close_notify_sent and hasattr(sock, "unwrap"):
                # (A plain socket has no unwrap: a plain-text answer on a TLS port.)
                _send_close_notify(sock)
                reply.close_notify_sent = True
            sock.shutdown(socket.SHUT_WR)
        except self._would_block as blocked:
            events = EVENT_READ if isinstance(blocked, self._want_read) else EVENT_WRITE
            if sock not in self._sending:
                if stream is not None:
                    # Waiting starts now, not when the stream began (or last waited).
                    self._streams_idle.pop(sock, None)
                    reply.deadline = time.monotonic() + self._timeout
                self._sending[sock] = reply
            self._watch(sock, reply, events, self._write_ready)
            return
        except OSError:
            self._drop(sock, reply)  # the client went away: nobody to write to
            return
        if reply.watched:
            self._loop.unwatch(sock)
            reply.watched = False
        self._sending.pop(sock, None)
        self._streams_idle.pop(sock, None)
        reply.release(sock)
        if len(self._lingering) >= self._max_lingering:
            sock.close()  # too many already: closing now beats running out of descriptors
            return
        self._lingering[sock] = time.monotonic() + self._linger
        self._loop.watch(sock, EVENT_READ, self._linger_read)

    def _progress(self, sock, reply, sent):
        """A stream's client took `sent` bytes: its deadline starts again."""
        if sock in self._sending:
            reply.deadline = time.monotonic() + self._timeout
            self._sending.move_to_end(sock)  # the latest deadline: the order holds
        reply.stream._sent(sent)

    def _drop(self, sock, reply):
        """Closes `sock` wherever it stands, and releases its reply."""
        self._loop.unwatch(sock)
        self._sending.pop(sock, None)
        self._lingering.pop(sock, None)
        self._streams_idle.pop(sock, None)
        sock.close()
        reply.release(sock)
        if reply.stream is not None:
            reply.stream._lost()

    def _linger_read(self, sock):
        try:
            data = sock.recv(LINGER_RECV_BYTES)
        except self._would_block:
            return
        except OSError:
            data = b""
        except Exception:
            self._end_linger(sock)
            raise
        if not data:
            self._end_linger(sock)

    def _end_linger(self, sock):
        self._loop.unwatch(sock)
        del self._lingering[sock]
        sock.close()


def _send_close_notify(sock):
    """Sends TLS close_notify, so the client knows the reply is complete, not cut off.
    The client's own close_notify is not waited for: lingering reads what comes."""
    try:
        sock.unwrap()
    except OSError as error:
        from . import tls
        if isinstance(error, tls.WANT_WRITE):
            raise  # not sent yet: try again when the socket takes more
        # Want-read: ours is out and OpenSSL would wait for the client's.
