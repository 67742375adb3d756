"""The TCP server: listeners, connections, limits, TLS handshakes, reload and shutdown.

One thread runs an event loop (`eventloop`) that accepts connections, reads requests,
runs their commands (`dispatch`, `executor`) and writes replies (`replies`), none of it
blocking: an idle or slow client costs a socket and nothing more, commands run
concurrently, and a slow one never delays another client. Protocol decisions live in
`protocol` and `auth`, process handling in `executor`, binding and accepting in
`listeners`, the count of connections against the limits in `slots`.
"""

import collections
import logging
import os
import socket
import time

from . import executor, systemd
from .dispatch import Dispatcher, format_address
from .eventloop import EVENT_READ, EVENT_WRITE, Loop
# StartupError is what RelayServer() raises: callers import it from here.
from .listeners import Listeners, StartupError, listen  # noqa: F401
from .options import Options  # noqa: F401  (server.Options: the options it takes)
from .protocol import (BAD_JSON, INTERNAL_ERROR, PLAIN_ON_TLS, REQUEST_TIMEOUT,
                       SERVER_BUSY, RelayError, RequestReader, encode_reply, error_reply)
from .reloading import Reloader
from .replies import ReplyWriter
from .slots import ConnectionSlots

log = logging.getLogger("uscmdrelay")

# After --shutdown-timeout the commands still running are killed (SIGTERM, then SIGKILL
# after the executor's grace); this long past that the server exits whatever is left.
SHUTDOWN_KILL_SECONDS = executor.TERM_GRACE_SECONDS + 3.0
RECV_BYTES = 65536


class _Client(object):
    """A connection whose request is still being read.

    `config` is the configuration in force when it was accepted: a reload applies to
    connections accepted after it, never to one already in flight. `handshaking`: its
    TLS handshake is not done yet.
    """

    __slots__ = ("sock", "address", "reader", "deadline", "config", "handshaking")

    def __init__(self, sock, address, reader, deadline, config, handshaking=False):
        self.sock = sock
        self.address = address
        self.reader = reader
        self.deadline = deadline
        self.config = config
        self.handshaking = handshaking


class RelayServer(object):
    """Serves `config` (a config.Config) with `options`.

    The constructor binds and listens (or adopts `listeners`, sockets already listening,
    e.g. from systemd), or raises StartupError without leaking a socket. `serve_forever()`
    runs the loop until `shutdown()`; `reload()` swaps in `loader()`'s configuration
    (and `tls_loader()`'s TLS context). Both are safe to call from any thread or a
    signal handler. `metrics`: a metrics_file.MetricsFile (--metrics-file), or None.
    """

    def __init__(self, config, options, listeners=None, loader=None, tls_context=None,
                 tls_loader=None, metrics=None):
        self.config = config
        self.options = options
        self._reloader = Reloader(loader, tls_loader, metrics)
        self._metrics = metrics
        # With TLS every accepted socket is wrapped and handshakes inside the loop.
        self._tls = tls_context
        self._would_block = (BlockingIOError, InterruptedError)
        if tls_context is not None:
            from . import tls
            self._would_block += tls.WOULD_BLOCK
        sockets = listeners or [listen(options.host, options.port)]
        self._loop = Loop()
        self._listeners = Listeners(self._loop, sockets, self._accept)
        # In deadline order, since its entries all get the same allowance.
        self._reading = collections.OrderedDict()  # sock -> _Client
        self._waiting = {}  # sock -> address, while its command runs
        # The connections counted against the limits, from accept until their reply is
        # written: the writer releases each place when its connection stops counting.
        self._slots = ConnectionSlots(options.max_connections,
                                      options.max_connections_per_host)
        # A slow reader gets --request-timeout to take its reply, as to send its request.
        self._writer = ReplyWriter(self._loop, options.request_timeout,
                                   options.max_connections, tls_context is not None)
        self._stopping = False
        self._draining_until = None
        self._commands_stopped = False
        self._reload_requested = False
        self._dispatcher = Dispatcher(options, self._loop, self._respond)
        if metrics is not None:
            self._dispatcher.metrics = metrics.metrics
            metrics.metrics.sample = lambda: (len(self._slots), self._dispatcher.running)

    @property
    def address(self):
        """The (host, port) of the first listener; port 0 asks the kernel for a free one."""
        return self.addresses[0]

    @property
    def addresses(self):
        return self._listeners.addresses

    @property
    def open_connections(self):
        return len(self._slots)

    def shutdown(self):
        """Stops accepting at once; serve_forever() returns when the requests in flight
        are answered, or --shutdown-timeout later (their commands killed, code 3003)."""
        self._stopping = True
        self._loop.wake()

    def reload(self):
        """Asks the loop to reload the configuration (SIGHUP)."""
        self._reload_requested = True
        self._loop.wake()

    def serve_forever(self):
        loop = self._loop
        self._listeners.start()
        systemd.notify("READY=1", "MAINPID=%d" % os.getpid(), "STATUS=" + self._status())
        if self._metrics is not None:
            self._metrics.start(loop)
        try:
            while not self._finished():
                loop.run_once(self._next_timeout(), self._callback_failed)
                if self._reload_requested:
                    self._reload()
                if self._stopping and self._draining_until is None:
                    self._begin_drain()
                self._expire(time.monotonic())
        finally:
            self._dispatcher.abort_commands()
            for sock in list(self._reading):
                self._close_reading(sock)
            self._writer.close_all()
            if self._metrics is not None:
                self._metrics.stop()
        log.info("stopped: %d requests served, %d of them errors",
                 self._dispatcher.requests, self._dispatcher.errors)

    def _finished(self):
        if self._draining_until is None:
            return False
        if not self.open_connections and not self._dispatcher.running:
            return True  # a command whose client went away still gets its time
        # Past the deadline the running commands were stopped; give them the kill grace.
        return time.monotonic() >= self._draining_until + SHUTDOWN_KILL_SECONDS

    def _status(self):
        return "serving %s (config %s: %d keys, %d commands)" % (
            ", ".join(format_address(address) for address in self.addresses),
            self.config.directory, len(self.config.keys), self.config.command_count)

    def _begin_drain(self):
        """Stops accepting; the requests in flight get --shutdown-timeout to finish."""
        self._listeners.close()
        self._draining_until = time.monotonic() + self.options.shutdown_timeout
        # A connection that has sent nothing yet is not a request in flight: an idle
        # client or a port scanner must not hold `systemctl stop` for --request-timeout.
        for sock, client in list(self._reading.items()):
            if client.handshaking:
                # Idle too, but 3004 cannot be sent before the handshake: a write would
                # wait for the client to go on with it, up to --request-timeout.
                self._dispatcher.audit(logging.INFO, client.address, None, None,
                                       SERVER_BUSY)
                self._close_reading(sock)
            elif not client.reader.received:
                self._refuse_request(sock, client.address, RelayError(
                    SERVER_BUSY, "server is shutting down"))
        in_flight = self.open_connections
        systemd.notify("STOPPING=1", "STATUS=stopping: %d requests in flight" % in_flight)
        log.info("stopping: no new connections; %d requests in flight get up to %g s",
                 in_flight, self.options.shutdown_timeout)

    def _reload(self):
        self._reload_requested = False
        systemd.notify("RELOADING=1", "MONOTONIC_USEC=%d" % systemd.monotonic_usec(),
                       "STATUS=reloading the configuration")
        self.config, self._tls = self._reloader.reload(self.config, self._tls)
        systemd.notify("READY=1", "STATUS=" + self._status())

    def server_close(self):
        """Closes the listeners and the event loop."""
        try:
            self._listeners.close()
        finally:
            self._loop.close()

    # -- the loop ---------------------------------------------------------------------

    def _next_timeout(self):
        deadlines = []
        if self._reading:
            deadlines.append(next(iter(self._reading.values())).deadline)
        writing = self._writer.next_deadline()
        if writing is not None:
            deadlines.append(writing)
        if self._listeners.paused_until is not None:
            deadlines.append(self._listeners.paused_until)
        if self._draining_until is not None:
            deadline = self._draining_until
            if self._commands_stopped:
                deadline += SHUTDOWN_KILL_SECONDS
            deadlines.append(deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self, now):
        while self._reading:
            sock, client = next(iter(self._reading.items()))
            if client.deadline > now:
                break
            self._give_up(sock, client, RelayError(
                REQUEST_TIMEOUT, "request not complete within %g s"
                % self.options.request_timeout))
        self._writer.expire(now)  # a client that does not read its reply loses it
        self._listeners.expire(now)
        if (self._draining_until is not None and now >= self._draining_until
                and not self._commands_stopped):
            self._commands_stopped = True
            self._dispatcher.stop_commands()
            while self._reading:
                sock, client = next(iter(self._reading.items()))
                self._give_up(sock, client, RelayError(
                    REQUEST_TIMEOUT, "request not complete when the server stopped"))

    def _give_up(self, sock, client, error):
        """Ends a connection whose request did not come in time: with `error` as its
        reply, or, before a TLS handshake is done, without one (any reply would be
        plain text to a TLS client, or wait for the handshake)."""
        if client.handshaking:
            self._dispatcher.audit(logging.INFO, client.address, None, None, error.code)
            self._close_reading(sock)
        else:
            self._refuse_request(sock, client.address, error)

    def _callback_failed(self, fileobj):
        """A loop callback raised: a bug must cost one connection at most, never the
        server. Called inside the except block."""
        log.exception("internal error in the connection loop")
        if fileobj in self._reading:
            client = self._reading[fileobj]
            self._refuse_request(fileobj, client.address, RelayError(INTERNAL_ERROR))
        elif fileobj in self._waiting:
            self._loop.unwatch(fileobj)  # stop watching; the reply still comes
        elif fileobj in self._listeners:
            self._listeners.pause()

    def _accept(self, sock, address):
        """Lets a connection in (its request is read next), or refuses it."""
        refusal = self._slots.refusal(address)
        if refusal is not None:
            self._refuse_busy(sock, address, refusal)
            return
        # With TLS, the first bytes decide: a TLS client speaks first (_sniff).
        callback = self._read if self._tls is None else self._sniff
        self._slots.take(sock, address)
        # The deadline covers a TLS handshake too: a slow one is a slow request.
        client = _Client(sock, address, RequestReader(self.options.max_request),
                         time.monotonic() + self.options.request_timeout, self.config,
                         self._tls is not None)
        self._reading[sock] = client
        self._loop.watch(sock, EVENT_READ, callback)

    def _sniff(self, sock):
        """Looks at the first bytes on a TLS listener without taking them: a TLS record
        starts the handshake; a plain JSON request (`{` after white space) gets a plain
        JSON error saying the server speaks TLS, instead of a reset that says nothing
        (nginx answers "plain HTTP request was sent to HTTPS port" likewise)."""
        from . import tls
        client = self._reading[sock]
        try:
            data = sock.recv(tls.SNIFF_BYTES, socket.MSG_PEEK)
            kind = tls.first_bytes_kind(data)
            if kind == "blank":
                sock.recv(len(data))  # taken, or it would wake the loop again at once
                return
        except self._would_block:
            return
        except OSError:
            kind = None
        if kind in (None, "closed"):
            self._close_reading(sock)
            return
        if kind == "plain":
            self._refuse_request(sock, client.address, RelayError(BAD_JSON, PLAIN_ON_TLS))
            return
        self._loop.unwatch(sock)
        del self._reading[sock]
        try:
            wrapped = self._tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
        except (OSError, ValueError) as error:
            log.info("client=%s TLS failed: %s", format_address(client.address), error)
            sock.close()
            self._slots.release(sock)
            return
        self._slots.move(sock, wrapped)
        client.sock = wrapped
        self._reading[wrapped] = client
        self._loop.watch(wrapped, EVENT_READ, self._handshake)
        self._handshake(wrapped)

    def _handshake(self, sock):
        """Advances a TLS handshake; once done, the connection is read like any other."""
        from . import tls
        try:
            sock.do_handshake()
        except tls.WANT_WRITE:
            self._loop.rewatch(sock, EVENT_WRITE, self._handshake)
            return
        except self._would_block:
            self._loop.rewatch(sock, EVENT_READ, self._handshake)
            return
        except (OSError, ValueError) as error:
            # A plaintext client, a bad or missing client certificate, a port scanner.
            log.info("client=%s TLS handshake failed: %s",
                     format_address(self._reading[sock].address), error)
            self._close_reading(sock)
            return
        self._reading[sock].handshaking = False
        self._loop.rewatch(sock, EVENT_READ, self._read)
        self._read(sock)  # the request may have come with the handshake's last flight

    def _refuse_busy(self, sock, address, message):
        """Refuses a connection beyond a limit; it was never counted."""
        error = RelayError(SERVER_BUSY, message)
        self._dispatcher.audit(logging.WARNING, address, None, None, error.code)
        if self._tls is not None:
            # A reply would need a handshake first, which is work a busy server refuses.
            sock.close()
            return
        self._send_error(sock, error)

    def _read(self, sock):
        client = self._reading[sock]
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except self._would_block:
                return
            except OSError:
                self._close_reading(sock)
                return
            try:
                request = client.reader.feed(data) if data else client.reader.finish()
            except RelayError as error:
                self._refuse_request(sock, client.address, error)
                return
            if request is not None:
                break
            # TLS may hold decrypted bytes the selector cannot see: read them now.
            if self._tls is None or not sock.pending():
                return
        # While its command runs, the connection is watched for its client going away:
        # for errors and hang-ups only, which are reported whatever the mask. A reset is
        # a client gone; an end of stream is not (`echo ... | nc -N` half-closes and
        # reads the reply), nor are bytes after the request (left unread, as ever). Not
        # reading matters with TLS: once OpenSSL has read the end of a half-closed stream
        # without close_notify (ncat --ssl does that), it no longer writes the reply.
        self._loop.rewatch(sock, 0, self._client_hung_up)
        del self._reading[sock]
        self._waiting[sock] = client.address
        self._dispatcher.handle(sock, client.address, client.config, request)

    def _client_hung_up(self, sock):
        """The connection of a running command has an error (a reset) or is closed both
        ways: its client went away."""
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as failure:
            error = failure.errno
        self._client_gone(sock, os.strerror(error) if error else "connection closed")

    def _client_gone(self, sock, reason):
        """The client of a running command went away: its place is free at once, its
        command keeps running (the dispatcher drops its reply and says so in the audit
        line)."""
        address = self._waiting.pop(sock)
        self._loop.unwatch(sock)
        sock.close()
        self._slots.release(sock)
        log.info("client=%s went away while its command runs (%s); its reply will be "
                 "dropped", format_address(address), reason)
        self._dispatcher.client_gone(sock)

    def _refuse_request(self, sock, address, error):
        """Answers a request that failed before it was complete, then lets it go."""
        self._loop.unwatch(sock)
        del self._reading[sock]
        self._dispatcher.audit(logging.INFO, address, None, None, error.code)
        self._send_error(sock, error)

    def _send_error(self, sock, error):
        """Sends the reply to a RelayError and closes the connection."""
        self._writer.send(sock, [encode_reply(error_reply(error.code, error.message))],
                          self._slots.release)

    def _respond(self, sock, pieces):
        """Sends the reply to a request the dispatcher has answered."""
        if self._waiting.pop(sock, None) is not None:
            self._loop.unwatch(sock)
        self._writer.send(sock, pieces, self._slots.release)

    def _close_reading(self, sock):
        self._loop.unwatch(sock)
        del self._reading[sock]
        sock.close()
        self._slots.release(sock)
