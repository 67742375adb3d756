"""The parts of systemd's protocols a service needs, in plain socket code.

sd_notify(3): readiness, reload and stop notifications to $NOTIFY_SOCKET.
sd_listen_fds(3): listening sockets passed by socket activation ($LISTEN_FDS/$LISTEN_PID).
journal detection: whether stderr is connected to the journal ($JOURNAL_STREAM).
Nothing here raises for a missing or broken systemd: without it these are no-ops.
"""

import logging
import os
import socket
import time

log = logging.getLogger("uscmdrelay")

LISTEN_FDS_START = 3
# Variables that describe this process' own relation to systemd: a child must never
# inherit them (sd_listen_fds(3) says to unset them), or it could act on our sockets.
SERVICE_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")


def notify(*fields):
    """Sends `fields` (e.g. "READY=1") to $NOTIFY_SOCKET; returns True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    message = "\n".join(fields).encode("utf-8")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(address)
            sock.sendall(message)
        finally:
            sock.close()
    except OSError as error:
        log.debug("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), error)
        return False
    return True


def monotonic_usec():
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC=."""
    return int(time.monotonic() * 1000000)


def listen_sockets():
    """Returns the listening sockets systemd passed to this process, or [].

    Only when $LISTEN_PID names this process: the variables may be left over from a
    parent that was itself socket-activated. Raises ValueError, with the fd and what is
    wrong in its message, when a passed descriptor is not a listening TCP socket.
    """
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    sockets = []
    try:
        for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
            sockets.append(_listening_socket(fd))
    except ValueError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listening_socket(fd):
    """The passed descriptor `fd` as a non-blocking socket; raises ValueError unless it
    is a listening TCP socket."""
    # socket.socket(fileno=) only detects the family from 3.7 on; ask the kernel.
    try:
        probe = socket.socket(fileno=fd)
        try:
            family = probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            protocol = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        finally:
            probe.detach()
    except OSError as error:
        raise ValueError("fd %d: %s" % (fd, error.strerror or error))
    problem = _not_tcp(family, kind, protocol)
    if problem:
        raise ValueError("fd %d: %s; uscmdrelay listens on TCP only (ListenStream=PORT or "
                         "ADDRESS:PORT)" % (fd, problem))
    if not listening:
        raise ValueError("fd %d: a TCP socket that is not listening (a connection, as "
                         "Accept=yes passes); uscmdrelay needs the listening socket "
                         "(Accept=no)" % fd)
    sock = socket.socket(family, kind, 0, fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def _not_tcp(family, kind, protocol):
    """What a socket of this family, type and protocol is, if it is not TCP; else None."""
    if family == socket.AF_UNIX:
        return "a Unix-domain socket"
    if family not in (socket.AF_INET, socket.AF_INET6):
        return "a socket of address family %d" % family
    if kind == socket.SOCK_DGRAM:
        return "a datagram (UDP) socket"
    if kind != socket.SOCK_STREAM or protocol != socket.IPPROTO_TCP:
        return "a socket of type %d, protocol %d" % (kind, protocol)
    return None


def stderr_is_journal():
    """True when stderr is the journal stream systemd set up ($JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """`<N>message`: the journal reads the syslog priority N and adds its own timestamp."""

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                  logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record):
        priority = self.PRIORITIES.get(record.levelno, 6)
        text = logging.Formatter.format(self, record)
        # Every line of a traceback carries the priority, or the journal would file the
        # continuation lines as INFO.
        return "\n".join("<%d>%s" % (priority, line) for line in text.split("\n"))
