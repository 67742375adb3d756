"""The listening sockets: binding one, accepting from them, pausing when out of descriptors.

What becomes of an accepted connection (limits, TLS, reading its request) is the
server's business, not this module's.
"""

import errno
import logging
import socket
import time

from .eventloop import EVENT_READ

log = logging.getLogger("uscmdrelay")

ACCEPTS_PER_WAKE = 64
# When accept() fails for lack of file descriptors the listener stays readable; without
# a pause the loop would spin at 100% CPU until a descriptor frees up.
ACCEPT_PAUSE_SECONDS = 0.1


class StartupError(Exception):
    """The server could not start (for example: the port is in use)."""


class Listeners(object):
    """Listening `sockets` watched on `loop` (from `start()` to `close()`): each
    connection accepted goes to `on_accept(sock, address)`, non-blocking, with Nagle off."""

    def __init__(self, loop, sockets, on_accept):
        self._loop = loop
        self._sockets = list(sockets)
        self._on_accept = on_accept
        self._watched = False
        self.paused_until = None  # time.monotonic() when accepting resumes

    def __contains__(self, fileobj):
        return any(fileobj is sock for sock in self._sockets)

    @property
    def addresses(self):
        """The (host, port) each socket listens on (host and None for a Unix socket)."""
        return [_socket_name(sock) for sock in self._sockets]

    def start(self):
        for sock in self._sockets:
            self._loop.watch(sock, EVENT_READ, self._accept)
        self._watched = True

    def pause(self):
        """Stops accepting for ACCEPT_PAUSE_SECONDS (`expire` resumes); paused already
        is fine."""
        if self.paused_until is None and self._watched:
            self._unwatch()
            self.paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS

    def expire(self, now):
        """Resumes accepting once a pause is over."""
        if self.paused_until is not None and self.paused_until <= now:
            self.paused_until = None
            self.start()

    def close(self):
        """Stops accepting for good and closes the sockets; closed already is fine."""
        if self._watched:
            self._unwatch()
        self.paused_until = None
        for sock in self._sockets:
            sock.close()

    def _unwatch(self):
        for sock in self._sockets:
            self._loop.unwatch(sock)
        self._watched = False

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
                    self.pause()
                    return
                raise
            sock.setblocking(False)
            # The reply is one write; with TLS, session tickets go out just before it,
            # and Nagle would hold the reply until the client's delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_accept(sock, address)


def listen(host, port):
    """Returns a listening, non-blocking socket; raises StartupError and leaks nothing."""
    lookup = host or None
    if lookup is not None and all(ord(char) < 128 for char in lookup):
        # A text host goes through the IDNA codec, which costs ~1 ms of start-up to load;
        # an ASCII name or address needs none of it.
        lookup = lookup.encode("ascii")
    try:
        infos = socket.getaddrinfo(lookup, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
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


def _socket_name(sock):
    name = sock.getsockname()
    return name[:2] if isinstance(name, tuple) else (name, None)
