"""What a worker thread does with one complete request: authorize it, run the command
within its limits, reply, and write the audit line.

The selector loop in `server` hands each complete request to `Dispatcher.handle` in a
worker thread; everything here may block (the command runs here), nothing here touches
the loop's state.
"""

import json
import logging
import os
import socket
import threading
import time

from . import executor, systemd
from .auth import authenticate, authorize, check_client_address, visible_commands
from .protocol import (ALREADY_RUNNING, COMMAND_FAILED, COMMAND_TIMED_OUT, INTERNAL_ERROR,
                       OK, RelayError, command_reply, error_reply, iter_reply, list_reply)

log = logging.getLogger("uscmdrelay")

RECV_BYTES = 65536
SEND_BYTES = 65536
# After the reply, how long we wait for the client to close before we do. Closing a socket
# with unread input makes the kernel send RST, which can destroy the reply in flight.
LINGER_SECONDS = 1.0
LINGER_DRAIN_BYTES = 65536
LOG_ARGUMENTS_CHARS = 1000


class Dispatcher(object):
    """Serves complete requests with the server's `options`; `cancel` (an Event) kills
    the commands still running when the server stops."""

    def __init__(self, options, cancel):
        self.options = options
        self.cancel = cancel
        # What every command inherits: our environment, less what describes our own
        # relation to systemd (sd_listen_fds(3): children must not see it).
        self._base_env = dict((name, value) for name, value in os.environ.items()
                              if name not in systemd.SERVICE_VARIABLES)
        self._running_lock = threading.Lock()
        self._running = {}  # "cluster::name" -> runs in progress, for max_running
        self._counts_lock = threading.Lock()
        self.requests = 0
        self.errors = 0

    def handle(self, sock, address, config, request):
        """Answers one complete request on `sock` under `config`, then closes `sock`."""
        grant = None
        outcome = None
        try:
            # Known before anything else may refuse, so the audit line of a 1003, 1002,
            # 2003 or 2004 still says which key asked.
            grant = authenticate(config, request.auth_key)
            check_client_address(grant, address[0] if address else "")
            if request.is_list:
                code, reply = OK, list_reply([_describe(command) for command
                                              in visible_commands(config, grant)])
            else:
                command = authorize(config, request, grant).command
                outcome = self._run(command, address, request, grant)
                code, reply = _reply_for(outcome, self._timeout(command),
                                         self.cancel.is_set())
        except RelayError as error:
            code, reply = error.code, error_reply(error.code, error.message)
        except Exception:
            log.exception("internal error while serving %s %s", format_address(address),
                          request.command)
            code, reply = INTERNAL_ERROR, error_reply(INTERNAL_ERROR)
        self.audit(logging.INFO, address, grant, request, code, outcome)
        _reply_and_close(sock, iter_reply(reply), self.options.request_timeout)

    def _timeout(self, command):
        timeout = command.policy.timeout
        return self.options.timeout if timeout is None else timeout

    def _run(self, command, address, request, grant):
        """Runs an authorized command within its max_running; returns the Outcome."""
        policy = command.policy
        shell = self.options.shell_exec if policy.shell is None else policy.shell
        argv = executor.build_argv(command, request.arguments, shell)
        self._start_run(command)
        try:
            return executor.run(argv, self._timeout(command) or None,
                                self.options.max_output, cwd=policy.cwd,
                                env=self._command_env(address, request, grant),
                                cancel=self.cancel)
        finally:
            self._end_run(command)

    def _start_run(self, command):
        """Counts a run of `command`; raises RelayError(3005) past its max_running."""
        limit = command.policy.max_running
        if limit is None:
            return
        with self._running_lock:
            running = self._running.get(command.full_name, 0)
            if running >= limit:
                raise RelayError(ALREADY_RUNNING, "command already running (max_running "
                                 "is %d)" % limit)
            self._running[command.full_name] = running + 1

    def _end_run(self, command):
        if command.policy.max_running is None:
            return
        with self._running_lock:
            self._running[command.full_name] -= 1
            if not self._running[command.full_name]:
                del self._running[command.full_name]

    def _command_env(self, address, request, grant):
        """The command's environment: ours, plus who called it (never the key itself)."""
        env = dict(self._base_env)
        env["USCMDRELAY_CLIENT"] = address[0] if address else ""
        env["USCMDRELAY_CLUSTER"] = request.cluster
        env["USCMDRELAY_COMMAND"] = request.name
        env["USCMDRELAY_KEY"] = grant.label
        return env

    def audit(self, level, address, grant, request, code, outcome=None):
        """Counts a request and writes its audit line (the key itself never appears)."""
        with self._counts_lock:
            self.requests += 1
            if code != OK:
                self.errors += 1
        _audit(level, address, grant, request, code, outcome)


def _describe(command):
    """One entry of the `::list` reply."""
    policy = command.policy
    return {"command": command.full_name, "description": policy.description,
            "min_args": policy.min_args, "max_args": policy.max_args}


def _reply_for(outcome, timeout, stopping=False):
    """Returns (code, reply object) for a command that ran."""
    if outcome.timed_out and stopping:
        code = COMMAND_TIMED_OUT
        message = "command killed: the server is shutting down"
    elif outcome.timed_out:
        code = COMMAND_TIMED_OUT
        message = "command timed out after %g s and was killed" % timeout
    elif outcome.exit_code == 0:
        code = OK
        message = outcome.stdout_text().rstrip("\r\n")
    else:
        code = COMMAND_FAILED
        message = (outcome.stderr_text() or outcome.stdout_text()).rstrip("\r\n")
    return code, command_reply(code, message, outcome)


def _reply_and_close(sock, pieces, timeout):
    """Sends the reply (an iterable of bytes), then closes the connection without
    destroying the reply.

    Blocking sends within one total timeout: a client that does not read its reply
    within `timeout` seconds loses it, and the worker moves on.
    """
    deadline = time.monotonic() + timeout
    try:
        buffered = bytearray()
        for piece in pieces:
            buffered += piece
            if len(buffered) >= SEND_BYTES:
                _send_before(sock, buffered, deadline)
                del buffered[:]
        _send_before(sock, buffered, deadline)
        sock.settimeout(LINGER_SECONDS)
        if hasattr(sock, "unwrap"):
            # TLS: close_notify tells the client the reply is complete, not cut off.
            sock.unwrap()
        sock.shutdown(socket.SHUT_WR)
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


def _send_before(sock, data, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("reply not read in time")
    sock.settimeout(remaining)
    sock.sendall(data)


def format_address(address):
    """`host:port`, `[v6 host]:port`, or `-` for no address."""
    if not address:
        return "-"
    host, port = address[0], address[1]
    if port is None:
        return str(host)
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def _audit(level, address, grant, request, code, outcome):
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
            format_address(address), json.dumps(grant.label) if grant else "-", command,
            arguments, code,
            outcome.exit_code if outcome is not None else "-",
            outcome.duration_ms if outcome is not None else "-")
