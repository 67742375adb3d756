"""The TCP server: listener, connections, limits, and the audit log.

One thread runs a selector loop that accepts connections and reads requests, so hundreds
of idle or slow clients cost a socket each and nothing more. A complete request goes to a
worker thread, which authorizes it, runs the command and writes the reply; commands
therefore run concurrently and a slow one never delays another client. All the protocol
decisions live in `protocol` and `auth`; all the process handling in `executor`.
"""

import collections
import errno
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time

from . import executor
from .auth import authenticate, authorize
from .protocol import (COMMAND_FAILED, COMMAND_TIMED_OUT, INTERNAL_ERROR, OK,
                       REQUEST_TIMEOUT, SERVER_BUSY, RelayError, RequestReader,
                       command_reply, encode_reply, error_reply)

log = logging.getLogger("uscmdrelay")

RECV_BYTES = 65536
ACCEPTS_PER_WAKE = 64
# When accept() fails for lack of file descriptors the listener stays readable; without
# a pause the loop would spin at 100% CPU until a descriptor frees up.
ACCEPT_PAUSE_SECONDS = 0.1
# After the reply, how long we wait for the client to close before we do. Closing a socket
# with unread input makes the kernel send RST, which can destroy the reply in flight.
LINGER_SECONDS = 1.0
LINGER_DRAIN_BYTES = 65536
WORKER_IDLE_SECONDS = 60.0
LOG_ARGUMENTS_CHARS = 1000


class Options(object):
    """The server's limits; defaults match the CLI's."""

    def __init__(self, host="0.0.0.0", port=7777, timeout=60.0, max_output=1048576,
                 max_request=65536, request_timeout=10.0, max_connections=256,
                 shell_exec=False):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_output = max_output
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.shell_exec = shell_exec


class StartupError(Exception):
    """The server could not start (for example: the port is in use)."""


class _Client(object):
    """A connection whose request is still being read."""

    __slots__ = ("sock", "address", "reader", "deadline")

    def __init__(self, sock, address, reader, deadline):
        self.sock = sock
        self.address = address
        self.reader = reader
        self.deadline = deadline


class RelayServer(object):
    """Serves `config` (a config.Config; replace the attribute to reload) with `options`.

    The constructor binds and listens, or raises StartupError without leaking the socket.
    `serve_forever()` runs the loop until `shutdown()` is called from any thread.
    """

    def __init__(self, config, options):
        self.config = config
        self.options = options
        self._listener = _listen(options.host, options.port)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._reading = collections.OrderedDict()    # sock -> _Client, oldest first
        self._lingering = collections.OrderedDict()  # sock -> close deadline
        self._accept_paused_until = None
        self._open_lock = threading.Lock()
        self._open = 0
        self._stopping = False
        self._workers = _Workers()

    @property
    def address(self):
        """The (host, port) actually bound; port 0 asks the kernel for a free one."""
        return self._listener.getsockname()[:2]

    @property
    def open_connections(self):
        with self._open_lock:
            return self._open

    def shutdown(self):
        """Makes serve_forever() return; safe from any thread or a signal handler."""
        self._stopping = True
        self._wake()

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full, so the loop will wake anyway

    def serve_forever(self):
        selector = self._selector
        selector.register(self._listener, selectors.EVENT_READ, self._accept)
        selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake_pipe)
        try:
            while not self._stopping:
                for key, _ in selector.select(self._next_timeout()):
                    try:
                        key.data(key.fileobj)
                    except Exception:
                        # A bug must cost one connection at most, never the server.
                        log.exception("internal error in the connection loop")
                        self._drop(key.fileobj)
                self._expire(time.monotonic())
        finally:
            for sock in list(self._reading):
                self._close_reading(sock)
            for sock in list(self._lingering):
                self._end_linger(sock)

    def server_close(self):
        """Closes the listener and the wake pipe."""
        try:
            self._selector.close()
        finally:
            self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the loop ---------------------------------------------------------------------

    def _next_timeout(self):
        deadlines = []
        if self._reading:
            deadlines.append(next(iter(self._reading.values())).deadline)
        if self._lingering:
            deadlines.append(next(iter(self._lingering.values())))
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self, now):
        # Both tables are in deadline order, since every entry gets the same allowance.
        while self._reading:
            sock, client = next(iter(self._reading.items()))
            if client.deadline > now:
                break
            self._answer_from_loop(sock, client.address, RelayError(
                REQUEST_TIMEOUT, "request not complete within %g seconds"
                % self.options.request_timeout))
        while self._lingering:
            sock, deadline = next(iter(self._lingering.items()))
            if deadline > now:
                break
            self._end_linger(sock)
        if self._accept_paused_until is not None and self._accept_paused_until <= now:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, self._accept)

    def _drop(self, fileobj):
        """Cleans up after an unexpected error in a loop callback for `fileobj`."""
        if fileobj in self._reading:
            client = self._reading[fileobj]
            self._answer_from_loop(fileobj, client.address, RelayError(INTERNAL_ERROR))
        elif fileobj in self._lingering:
            self._end_linger(fileobj)
        elif fileobj is self._listener and self._accept_paused_until is None:
            self._pause_accept()

    def _pause_accept(self):
        self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS

    def _drain_wake_pipe(self, fd):
        try:
            os.read(fd, 4096)
        except OSError:
            pass

    def _accept(self, listener):
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept connections: %s; pausing accept for %g s",
                                error.strerror, ACCEPT_PAUSE_SECONDS)
                    self._pause_accept()
                    return
                raise
            sock.setblocking(False)
            with self._open_lock:
                busy = self._open >= self.options.max_connections
                if not busy:
                    self._open += 1
            if busy:
                self._refuse_busy(sock, address)
                continue
            client = _Client(sock, address, RequestReader(self.options.max_request),
                             time.monotonic() + self.options.request_timeout)
            self._reading[sock] = client
            self._selector.register(sock, selectors.EVENT_READ, self._read)

    def _refuse_busy(self, sock, address):
        error = RelayError(SERVER_BUSY, "server busy: %d connections already open"
                           % self.options.max_connections)
        _audit(logging.WARNING, address, None, None, error.code)
        self._send_and_linger(sock, encode_reply(error_reply(error.code, error.message)))

    def _read(self, sock):
        client = self._reading[sock]
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_reading(sock)
            return
        try:
            request = client.reader.feed(data) if data else client.reader.finish()
        except RelayError as error:
            self._answer_from_loop(sock, client.address, error)
            return
        if request is None:
            return
        self._selector.unregister(sock)
        del self._reading[sock]
        try:
            self._workers.submit(lambda: self._serve(sock, client.address, request))
        except RuntimeError as error:
            # "can't start new thread": out of memory or of the process' thread limit.
            log.error("cannot start a worker thread: %s", error)
            self._release()
            self._send_and_linger(sock, encode_reply(error_reply(
                SERVER_BUSY, "server busy: cannot start a worker")))

    def _answer_from_loop(self, sock, address, error):
        """Answers a request that failed before it was complete, then lets it go."""
        self._selector.unregister(sock)
        del self._reading[sock]
        self._release()
        _audit(logging.INFO, address, None, None, error.code)
        self._send_and_linger(sock, encode_reply(error_reply(error.code, error.message)))

    def _send_and_linger(self, sock, payload):
        try:
            sock.send(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._lingering) >= self.options.max_connections:
            sock.close()  # too many already: closing now beats running out of descriptors
            return
        self._lingering[sock] = time.monotonic() + LINGER_SECONDS
        self._selector.register(sock, selectors.EVENT_READ, self._linger_read)

    def _linger_read(self, sock):
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_linger(sock)

    def _end_linger(self, sock):
        self._selector.unregister(sock)
        del self._lingering[sock]
        sock.close()

    def _close_reading(self, sock):
        self._selector.unregister(sock)
        del self._reading[sock]
        sock.close()
        self._release()

    def _release(self):
        with self._open_lock:
            self._open -= 1

    # -- a worker thread: one complete request ---------------------------------------

    def _serve(self, sock, address, request):
        grant = None
        outcome = None
        try:
            try:
                # Known before authorize() may refuse, so the audit line of a 1002, 2003
                # or 2004 still says which key asked.
                grant = authenticate(self.config, request.auth_key)
                decision = authorize(self.config, request)
                argv = executor.build_argv(decision.command, request.arguments,
                                           self.options.shell_exec)
                outcome = executor.run(argv, self.options.timeout or None,
                                       self.options.max_output)
                code, reply = _reply_for(outcome, self.options.timeout)
            except RelayError as error:
                code, reply = error.code, error_reply(error.code, error.message)
            except Exception:
                log.exception("internal error while serving %s %s",
                              _format_address(address), request.command)
                code, reply = INTERNAL_ERROR, error_reply(INTERNAL_ERROR)
            _audit(logging.INFO, address, grant, request, code, outcome)
            _reply_and_close(sock, encode_reply(reply), self.options.request_timeout)
        finally:
            self._release()


def _reply_for(outcome, timeout):
    """Returns (code, reply object) for a command that ran."""
    if outcome.timed_out:
        code = COMMAND_TIMED_OUT
        message = "command timed out after %g seconds and was killed" % timeout
    elif outcome.exit_code == 0:
        code = OK
        message = outcome.stdout_text().rstrip("\r\n")
    else:
        code = COMMAND_FAILED
        message = (outcome.stderr_text() or outcome.stdout_text()).rstrip("\r\n")
    return code, command_reply(code, message, outcome)


def _reply_and_close(sock, payload, timeout):
    """Sends the reply, then closes the connection without destroying the reply.

    A blocking send with a total timeout: a client that does not read its reply within
    `timeout` seconds loses it, and the worker moves on.
    """
    try:
        sock.settimeout(timeout)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_SECONDS)
        drained = 0
        while drained < LINGER_DRAIN_BYTES:
            data = sock.recv(RECV_BYTES)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        sock.close()


class _Workers(object):
    """Threads that run complete requests: as many as there are requests to run.

    A job never waits for another to finish (the connection limit bounds how many run);
    threads idle for WORKER_IDLE_SECONDS go away.
    """

    def __init__(self):
        self._jobs = queue.Queue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job):
        """Runs `job()` in a thread; raises RuntimeError if a needed thread cannot start."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        # A new thread gets its first job directly: if it cannot start, nothing is queued.
        thread = threading.Thread(target=self._work, args=(job,), name="uscmdrelay-worker")
        thread.daemon = True
        thread.start()

    def _work(self, job):
        while job is not None:
            try:
                job()
            except Exception:
                log.exception("internal error in a worker thread")
            with self._lock:
                self._idle += 1
            job = self._next_job()

    def _next_job(self):
        """Waits for a job; returns None when this thread should retire."""
        while True:
            try:
                return self._jobs.get(timeout=WORKER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # Retire only if no job was promised to an idle thread meanwhile.
                    if self._idle > 0 and self._jobs.empty():
                        self._idle -= 1
                        return None


def _listen(host, port):
    """Returns a listening, non-blocking socket; raises StartupError and leaks nothing."""
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError("cannot listen on %s port %s: %s" % (host, port, error.strerror))
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise StartupError("cannot listen on %s port %s: %s"
                           % (host, port, error.strerror or error))
    return sock


def _format_address(address):
    if not address:
        return "-"
    host, port = address[0], address[1]
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def _audit(level, address, grant, request, code, outcome=None):
    """One line per request. The key itself never appears: only its label."""
    if not log.isEnabledFor(level):
        return
    arguments = "-"
    command = "-"
    if request is not None:
        command = json.dumps(request.command)
        arguments = json.dumps(request.arguments)
        if len(arguments) > LOG_ARGUMENTS_CHARS:
            arguments = arguments[:LOG_ARGUMENTS_CHARS] + "...(%d chars)" % len(arguments)
    log.log(level, "client=%s key=%s command=%s arguments=%s code=%d exit=%s duration_ms=%s",
            _format_address(address), json.dumps(grant.label) if grant else "-", command,
            arguments, code,
            outcome.exit_code if outcome is not None else "-",
            outcome.duration_ms if outcome is not None else "-")
