"""Tests for uscmdrelay.replies.ReplyWriter on its own: real socket pairs (Unix and TCP
on 127.0.0.1), real TLS (a throwaway PKI from tests/certs.py), a real eventloop.Loop;
no server and nothing mocked.

Every wait is bounded: `drive` runs the loop and the writer's deadlines and fails the
test at DEADLINE_SECONDS; a client reads in a thread joined with a timeout.
"""

import hashlib
import socket
import ssl
import struct
import threading
import time
import unittest

from tests import certs
from uscmdrelay import replies, tls
from uscmdrelay.eventloop import Loop
from uscmdrelay.replies import ReplyWriter, Stream

DEADLINE_SECONDS = 30.0
ROUND_SECONDS = 0.05
TINY_BUFFER_BYTES = 4096
# More than any kernel buffers between the two ends of a pair with TINY_BUFFER_BYTES.
BIG_REPLY_BYTES = 4 * 1024 * 1024
PIECE_BYTES = 10000  # not a divisor of SEND_BYTES: chunks join and split pieces


_patterns = {}


def pattern(size):
    """`size` bytes that differ all along, so a lost, doubled or swapped chunk shows."""
    if size not in _patterns:
        _patterns[size] = _make_pattern(size)
    return _patterns[size]


def _make_pattern(size):
    blocks = []
    total = 0
    counter = 0
    while total < size:
        block = hashlib.sha256(str(counter).encode()).digest()
        blocks.append(block)
        total += len(block)
        counter += 1
    return b"".join(blocks)[:size]


def pieces_of(data, size=PIECE_BYTES):
    return [data[start:start + size] for start in range(0, len(data), size)]


def tcp_pair(test, client_rcvbuf=None, server_sndbuf=None):
    """(server side, client side) of a TCP connection on 127.0.0.1; the server side is
    non-blocking, the client side blocking with a timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(client.close)
    if client_rcvbuf:
        # Before connect: the TCP window is agreed on at connect time.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
    client.settimeout(DEADLINE_SECONDS)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    test.addCleanup(server.close)
    if server_sndbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
    server.setblocking(False)
    return server, client


def unix_pair(test, client_rcvbuf=None, server_sndbuf=None):
    server, client = socket.socketpair()
    for sock in (server, client):
        test.addCleanup(sock.close)
    if client_rcvbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
    if server_sndbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
    server.setblocking(False)
    client.settimeout(DEADLINE_SECONDS)
    return server, client


class Reader(object):
    """Reads `sock` in a thread until the end of the stream, after waiting for `go`
    (set at once unless `hold`); `data` is what came, `error` what ended it otherwise."""

    def __init__(self, sock, hold=False, recv_bytes=TINY_BUFFER_BYTES):
        self.sock = sock
        self.recv_bytes = recv_bytes
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.done = threading.Event()
        self.chunks = []
        self.error = None
        self._thread = threading.Thread(target=self._run)
        self._thread.daemon = True
        self._thread.start()

    @property
    def data(self):
        return b"".join(self.chunks)

    def join(self, test):
        self.go.set()
        self._thread.join(DEADLINE_SECONDS)
        test.assertTrue(self.done.is_set(), "the reader did not see the end")

    def _run(self):
        try:
            self.go.wait(DEADLINE_SECONDS)
            while True:
                data = self.sock.recv(self.recv_bytes)
                if not data:
                    return
                self.chunks.append(data)
        except Exception as error:  # reported by the test's thread
            self.error = error
        finally:
            self.done.set()


class WriterTestCase(unittest.TestCase):

    def setUp(self):
        self.loop = Loop()
        self.addCleanup(self.loop.close)
        self.done = []  # the sockets on_done was called with, in order

    def writer(self, timeout=DEADLINE_SECONDS, max_lingering=16, tls=False,
               linger=replies.LINGER_SECONDS):
        writer = ReplyWriter(self.loop, timeout, max_lingering, tls, linger)
        self.addCleanup(writer.close_all)
        return writer

    def on_done(self, sock):
        self.done.append(sock)

    def drive(self, writer, until, what):
        """Runs the loop and `writer`'s deadlines until `until()`; fails at the deadline."""
        limit = time.monotonic() + DEADLINE_SECONDS
        while not until():
            now = time.monotonic()
            self.assertLess(now, limit, "still waiting for %s" % what)
            timeout = ROUND_SECONDS
            deadline = writer.next_deadline()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - now))
            self.loop.run_once(timeout)
            writer.expire(time.monotonic())

    def tls_pair(self, client_rcvbuf=None, server_sndbuf=None):
        """(server side, client side) of a TLS connection over TCP, handshake done; the
        client raises SSLEOFError on a stream that ends without close_notify."""
        certs.require_openssl(self)
        pki = certs.certificates()
        server_context = tls.server_context(pki.server_cert, pki.server_key)
        client_context = ssl.create_default_context(cafile=pki.ca)
        raw_server, raw_client = tcp_pair(self, client_rcvbuf, server_sndbuf)
        raw_server.setblocking(True)
        raw_server.settimeout(DEADLINE_SECONDS)
        result = {}

        def connect():
            try:
                result["client"] = client_context.wrap_socket(
                    raw_client, server_hostname="localhost", suppress_ragged_eofs=False)
            except Exception as error:
                result["error"] = error

        thread = threading.Thread(target=connect)
        thread.daemon = True
        thread.start()
        server = server_context.wrap_socket(raw_server, server_side=True)
        thread.join(DEADLINE_SECONDS)
        self.assertNotIn("error", result)
        client = result["client"]
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        server.setblocking(False)
        return server, client


class BigReplyTests(WriterTestCase):

    def test_a_big_reply_reaches_a_reader_that_waits_first_whole_and_in_order(self):
        data = pattern(BIG_REPLY_BYTES)
        for name, pair in (("socketpair", unix_pair), ("tcp", tcp_pair)):
            with self.subTest(pair=name):
                del self.done[:]
                server, client = pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
                reader = Reader(client, hold=True)
                writer = self.writer()
                writer.send(server, iter(pieces_of(data)), self.on_done)
                # The reader has not started: the write blocks, the loop does not.
                self.assertEqual((writer.sending, self.done), (1, []))
                self.drive(writer, lambda: True, "one round")
                reader.go.set()
                self.drive(writer, lambda: self.done, "the end of the reply")
                reader.join(self)
                self.assertIsNone(reader.error)
                self.assertEqual(len(reader.data), len(data))
                self.assertTrue(reader.data == data, "the reply arrived altered")
                self.assertEqual(self.done, [server])


class DeadlineTests(WriterTestCase):

    def test_a_reply_never_read_is_dropped_at_its_deadline_and_on_done_runs_once(self):
        server, client = tcp_pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        writer = self.writer(timeout=0.5)
        pieces = pieces_of(pattern(BIG_REPLY_BYTES))
        started = time.monotonic()
        writer.send(server, pieces, self.on_done)
        self.assertEqual((writer.sending, self.done), (1, []))
        self.assertLessEqual(writer.next_deadline(), started + 0.5 + 0.1)
        self.drive(writer, lambda: self.done, "the reply to be dropped")
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(self.done, [server])
        self.assertEqual(server.fileno(), -1, "the dropped connection is still open")
        self.assertEqual((writer.sending, writer.lingering, writer.next_deadline()),
                         (0, 0, None))
        writer.close_all()
        self.assertEqual(self.done, [server])
        # The client gets what the kernels held, then the end: not the whole reply.
        client.settimeout(5.0)
        received = 0
        while True:
            try:
                data = client.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        self.assertLess(received, BIG_REPLY_BYTES)


class TLSTests(WriterTestCase):

    def test_a_blocked_tls_write_is_retried_with_the_same_chunk(self):
        server, client = self.tls_pair(TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        data = pattern(BIG_REPLY_BYTES)
        reader = Reader(client, hold=True)
        writer = self.writer(tls=True)
        writer.send(server, pieces_of(data), self.on_done)
        self.assertEqual(writer.sending, 1, "the write did not block")
        for _ in range(3):
            self.drive(writer, lambda: True, "one round")
        reader.go.set()
        self.drive(writer, lambda: self.done, "the end of the reply")
        reader.join(self)
        # A chunk skipped or changed after a blocked write is an SSLError here (bad
        # write retry) or bytes lost; a missing close_notify is an SSLEOFError.
        self.assertIsNone(reader.error, "after %d bytes" % len(reader.data))
        self.assertEqual(len(reader.data), len(data))
        self.assertTrue(reader.data == data, "the reply arrived altered")
        self.assertEqual(self.done, [server])

    def test_close_notify_ends_a_tls_reply(self):
        server, client = self.tls_pair()
        writer = self.writer(tls=True)
        reader = Reader(client)
        writer.send(server, [b'{"code": 0}', b"\n"], self.on_done)
        self.drive(writer, reader.done.is_set, "the reader to see the end")
        reader.join(self)
        # Without close_notify, recv() raises SSLEOFError ("EOF occurred in violation
        # of protocol") instead of returning b"".
        self.assertIsNone(reader.error)
        self.assertEqual(reader.data, b'{"code": 0}\n')
        self.assertEqual(self.done, [server])


class LingerTests(WriterTestCase):

    def test_the_connection_half_closes_then_lingers_until_the_peer_closes(self):
        server, client = tcp_pair(self)
        writer = self.writer(linger=DEADLINE_SECONDS)
        client.sendall(b"bytes the server never reads\n")
        writer.send(server, [b"reply\n"], self.on_done)
        # The reply is out: the place is free, the connection lingers, half-closed.
        self.assertEqual((self.done, writer.sending, writer.lingering), ([server], 0, 1))
        self.assertEqual(client.recv(100), b"reply\n")
        self.assertEqual(client.recv(100), b"", "the server did not half-close")
        client.sendall(b"the server still reads (and drops) these\n")
        self.drive(writer, lambda: True, "one round")
        self.assertEqual(writer.lingering, 1)
        self.assertNotEqual(server.fileno(), -1)
        client.close()
        self.drive(writer, lambda: not writer.lingering, "the linger to end")
        self.assertEqual(server.fileno(), -1)
        self.assertEqual(self.done, [server])

    def test_a_peer_that_never_closes_is_closed_after_the_linger(self):
        server, client = tcp_pair(self)
        writer = self.writer(linger=0.5)
        started = time.monotonic()
        writer.send(server, [b"reply\n"], self.on_done)
        self.assertEqual(writer.lingering, 1)
        self.assertLessEqual(writer.next_deadline(), started + 0.5 + 0.1)
        self.drive(writer, lambda: not writer.lingering, "the linger to end")
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(server.fileno(), -1)
        self.assertEqual(self.done, [server])
        self.assertEqual(client.recv(100), b"reply\n")

    def test_past_max_lingering_a_connection_closes_at_once(self):
        writer = self.writer(max_lingering=1, linger=DEADLINE_SECONDS)
        first, _ = unix_pair(self)
        second, second_client = unix_pair(self)
        writer.send(first, [b"one\n"], self.on_done)
        writer.send(second, [b"two\n"], self.on_done)
        self.assertEqual(writer.lingering, 1)
        self.assertNotEqual(first.fileno(), -1)
        self.assertEqual(second.fileno(), -1)
        self.assertEqual(self.done, [first, second])
        self.assertEqual(second_client.recv(100), b"two\n")


class CloseAllTests(WriterTestCase):

    def test_close_all_closes_every_connection_and_calls_on_done_once_for_each(self):
        writer = self.writer(linger=DEADLINE_SECONDS)
        blocked = []
        for _ in range(2):
            server, _ = tcp_pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
            writer.send(server, pieces_of(pattern(BIG_REPLY_BYTES)), self.on_done)
            blocked.append(server)
        lingering, _ = unix_pair(self)
        writer.send(lingering, [b"reply\n"], self.on_done)
        self.assertEqual((writer.sending, writer.lingering), (2, 1))
        self.assertEqual(self.done, [lingering])
        writer.close_all()
        self.assertEqual((writer.sending, writer.lingering, writer.next_deadline()),
                         (0, 0, None))
        for sock in blocked + [lingering]:
            self.assertEqual(sock.fileno(), -1)
        self.assertEqual(sorted(map(id, self.done)),
                         sorted(map(id, [lingering] + blocked)))


class FaultTests(WriterTestCase):
    """A reply whose pieces raise (a bug): the connection closes, its place is released
    once, and the exception goes on to the caller (the loop's error handler)."""

    def test_pieces_that_raise_at_once_close_and_release_then_propagate(self):
        server, client = unix_pair(self)
        writer = self.writer()

        def pieces():
            yield b'{"partial'
            raise RuntimeError("planted fault")

        with self.assertRaisesRegex(RuntimeError, "planted fault"):
            writer.send(server, pieces(), self.on_done)
        self.assertEqual(self.done, [server])
        self.assertEqual(server.fileno(), -1)
        self.assertEqual((writer.sending, writer.lingering), (0, 0))
        self.assertEqual(client.recv(100), b"")

    def test_pieces_that_raise_after_a_blocked_write_close_and_release_then_propagate(self):
        server, client = unix_pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        writer = self.writer()

        def pieces():
            for piece in pieces_of(pattern(BIG_REPLY_BYTES)):
                yield piece
            raise RuntimeError("planted fault")

        writer.send(server, pieces(), self.on_done)
        self.assertEqual(writer.sending, 1)
        reader = Reader(client)
        failures = []

        def on_error(fileobj):
            failures.append(fileobj)

        limit = time.monotonic() + DEADLINE_SECONDS
        while not failures and time.monotonic() < limit:
            self.loop.run_once(ROUND_SECONDS, on_error)
        self.assertEqual(failures, [server])
        self.assertEqual(self.done, [server])
        self.assertEqual(server.fileno(), -1)
        self.assertEqual((writer.sending, writer.lingering), (0, 0))
        reader.join(self)
        self.assertLess(len(reader.data), BIG_REPLY_BYTES + 1)
        writer.close_all()
        self.assertEqual(self.done, [server])


class StreamTests(WriterTestCase):
    """An open-ended reply (replies.Stream): lines over time, then the last one."""

    def stream(self):
        gone = []
        stream = Stream(lambda: gone.append(True))
        return stream, gone

    def test_lines_written_over_time_arrive_in_order_then_the_end(self):
        server, client = tcp_pair(self)
        writer = self.writer(timeout=0.5)
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        reader = Reader(client)
        sent = []
        for index in range(5):
            line = b"line %d\n" % index
            stream.write(line)
            sent.append(line)
            # Idle longer than the timeout: a stream's deadline is one of progress.
            self.drive(writer, lambda: stream.unsent == 0, "the line to go")
            time.sleep(0.2 if index == 2 else 0)
            self.drive(writer, lambda: True, "one round")
        self.assertEqual(self.done, [])
        time.sleep(0.6)
        self.drive(writer, lambda: True, "one round")
        self.assertEqual((self.done, gone), ([], []))
        stream.end([b"final", b"\n"])
        self.drive(writer, reader.done.is_set, "the end of the stream")
        reader.join(self)
        self.assertEqual(reader.data, b"".join(sent) + b"final\n")
        self.assertEqual((self.done, gone), ([server], []))
        stream.write(b"after the end\n")  # dropped, no error
        self.assertEqual(stream.unsent, 0)

    def test_unsent_counts_what_the_client_has_not_taken_and_when_below_fires(self):
        server, client = tcp_pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        writer = self.writer()
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        data = pattern(BIG_REPLY_BYTES)
        for piece in pieces_of(data):
            stream.write(piece)
        self.assertGreater(stream.unsent, BIG_REPLY_BYTES // 2)
        caught_up = []
        stream.when_below(65536, lambda: caught_up.append(stream.unsent))
        self.drive(writer, lambda: True, "one round")
        self.assertEqual(caught_up, [])
        reader = Reader(client)
        self.drive(writer, lambda: caught_up, "the client to catch up")
        self.assertLessEqual(caught_up[0], 65536)
        stream.end([b"end\n"])
        self.drive(writer, lambda: self.done, "the end of the stream")
        reader.join(self)
        self.assertTrue(reader.data == data + b"end\n", "the stream arrived altered")
        self.assertEqual((stream.unsent, gone), (0, []))

    def test_a_client_that_takes_nothing_within_the_timeout_is_gone(self):
        server, client = tcp_pair(self, TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        writer = self.writer(timeout=0.5)
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        time.sleep(0.6)  # idle: does not count
        self.drive(writer, lambda: True, "one round")
        self.assertEqual(gone, [])
        started = time.monotonic()
        for piece in pieces_of(pattern(BIG_REPLY_BYTES)):
            stream.write(piece)
        self.drive(writer, lambda: gone, "the stream to be dropped")
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual((gone, self.done, server.fileno()), ([True], [server], -1))
        self.assertEqual((writer.sending, writer.next_deadline()), (0, None))
        stream.write(b"more")  # nowhere to go: dropped
        stream.end([b"final\n"])
        writer.close_all()
        self.assertEqual((gone, self.done), ([True], [server]))

    def test_a_reset_while_idle_is_noticed_at_once(self):
        server, client = tcp_pair(self)
        writer = self.writer()
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        stream.write(b"line\n")
        self.assertEqual(client.recv(100), b"line\n")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        self.drive(writer, lambda: gone, "the reset to be noticed")
        self.assertEqual((self.done, server.fileno()), ([server], -1))

    def test_a_write_to_a_closed_client_means_gone(self):
        server, client = tcp_pair(self)
        writer = self.writer()
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        client.close()  # a FIN: not noticed while idle (a half-close looks the same)
        self.drive(writer, lambda: True, "one round")
        self.assertEqual(gone, [])
        limit = time.monotonic() + DEADLINE_SECONDS
        while not gone and time.monotonic() < limit:
            stream.write(b"line\n")  # the first draws a reset, a later one fails
            self.drive(writer, lambda: True, "one round")
        self.assertEqual((gone, self.done), ([True], [server]))

    def test_a_blocked_tls_stream_write_is_retried_with_the_same_chunk(self):
        server, client = self.tls_pair(TINY_BUFFER_BYTES, TINY_BUFFER_BYTES)
        data = pattern(BIG_REPLY_BYTES)
        reader = Reader(client, hold=True)
        writer = self.writer(tls=True)
        stream, gone = self.stream()
        writer.send(server, stream, self.on_done)
        for piece in pieces_of(data):
            stream.write(piece)
            self.drive(writer, lambda: True, "one round")
        self.assertEqual(writer.sending, 1, "the write did not block")
        reader.go.set()
        self.drive(writer, lambda: stream.unsent == 0, "the stream to drain")
        stream.end([b"end\n"])
        self.drive(writer, lambda: self.done, "the end of the stream")
        reader.join(self)
        self.assertIsNone(reader.error, "after %d bytes" % len(reader.data))
        self.assertTrue(reader.data == data + b"end\n", "the stream arrived altered")
        self.assertEqual(gone, [])


if __name__ == "__main__":
    unittest.main()
