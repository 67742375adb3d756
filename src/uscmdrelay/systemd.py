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
    parent that was itself socket-activated. Raises OSError (with the fd in its message)
    when a passed descriptor is not a usable socket.
    """
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        # socket.socket(fileno=) only detects the family from 3.7 on; ask the kernel.
        try:
            probe = socket.socket(fileno=fd)
            try:
                family = probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
                kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            finally:
                probe.detach()
        except OSError as error:
            for sock in sockets:
                sock.close()
            raise OSError(error.errno, "fd %d: %s" % (fd, error.strerror or error))
        sock = socket.socket(family, kind, 0, fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


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
