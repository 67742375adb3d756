"""Writing replies: each as its client takes it, then closing without destroying it.

A `ReplyWriter` writes a reply (an iterable of bytes) to a non-blocking socket on the
server's event loop, within a deadline, whatever the size of the reply and however slowly
the client reads: nothing here ever blocks the loop. Once the reply is out it sends TLS
close_notify (with TLS), half-closes the connection and lingers a moment before closing,
so that the kernel does not answer unread client bytes with an RST that destroys the
reply in flight.

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


class _Reply(object):
    """A reply being written: the rest of its `pieces` (bytes), the `chunk` in flight,
    the `deadline` for all of it, and `on_done(sock)`, called once by `release`."""

    __slots__ = ("pieces", "chunk", "deadline", "close_notify_sent", "on_done")

    def __init__(self, pieces, deadline, on_done):
        self.pieces = iter(pieces)
        self.chunk = None
        self.deadline = deadline
        self.close_notify_sent = False
        self.on_done = on_done

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
        exception from `pieces` (a bug) closes the connection, then propagates."""
        reply = _Reply(pieces, time.monotonic() + self._timeout, on_done)
        try:
            self._write(sock, reply, False)  # most replies fit in the socket's buffer
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
        for sock in list(self._lingering):
            self._end_linger(sock)

    def _write_ready(self, sock):
        reply = self._sending[sock]
        try:
            self._write(sock, reply, True)
        except Exception:
            self._drop(sock, reply)
            raise

    def _write(self, sock, reply, waiting):
        """Writes what the socket takes now; waits for it to take more (`waiting`: it
        already does), or lets the connection linger once the reply is out."""
        try:
            while True:
                if not reply.chunk:
                    reply.chunk = reply.next_chunk()
                    if reply.chunk is None:
                        break
                reply.chunk = reply.chunk[sock.send(reply.chunk):]
            if self._tls and not reply.close_notify_sent and hasattr(sock, "unwrap"):
                # (A plain socket has no unwrap: a plain-text answer on a TLS port.)
                _send_close_notify(sock)
                reply.close_notify_sent = True
            sock.shutdown(socket.SHUT_WR)
        except self._would_block as blocked:
            events = EVENT_READ if isinstance(blocked, self._want_read) else EVENT_WRITE
            if waiting:
                self._loop.rewatch(sock, events, self._write_ready)
            else:
                self._sending[sock] = reply
                self._loop.watch(sock, events, self._write_ready)
            return
        except OSError:
            self._drop(sock, reply)  # the client went away: nobody to write to
            return
        if waiting:
            self._loop.unwatch(sock)
            del self._sending[sock]
        reply.release(sock)
        if len(self._lingering) >= self._max_lingering:
            sock.close()  # too many already: closing now beats running out of descriptors
            return
        self._lingering[sock] = time.monotonic() + self._linger
        self._loop.watch(sock, EVENT_READ, self._linger_read)

    def _drop(self, sock, reply):
        """Closes `sock` wherever it stands, and releases its reply."""
        self._loop.unwatch(sock)
        self._sending.pop(sock, None)
        self._lingering.pop(sock, None)
        sock.close()
        reply.release(sock)

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
