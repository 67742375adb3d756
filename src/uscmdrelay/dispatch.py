"""What the server does with one complete request: authorize it, start its command,
reply when the command is over, and write the audit line.

Everything here runs in the server's loop thread and must not block: a command is an
`executor.Run` on the same loop, and a reply goes to the server's `respond(sock,
pieces)`, which writes it as the client takes it.
"""

import functools
import json
import logging
import os
import time

from . import executor, spawn, streaming, systemd
from .auth import Refused, authorize
from .protocol import (ALREADY_RUNNING, COMMAND_FAILED, COMMAND_TIMED_OUT, INTERNAL_ERROR,
                       KEY_VARIABLE, OK, RelayError, command_reply, error_reply, iter_reply,
                       list_reply)
from .replies import Stream

log = logging.getLogger("uscmdrelay")

LOG_ARGUMENTS_CHARS = 1000


class _Job(object):
    """A request whose command is running; `gone`: its client went away. A streamed one
    has its `streamer` and the `live` replies.Stream its output goes to."""

    __slots__ = ("sock", "address", "request", "grant", "relay", "run", "gone", "streamer",
                 "live")

    def __init__(self, sock, address, request, grant, relay):
        self.sock = sock
        self.address = address
        self.request = request
        self.grant = grant
        self.relay = relay  # the config.Command it runs
        self.run = None
        self.gone = False
        self.streamer = None
        self.live = None


class Dispatcher(object):
    """Serves complete requests with the server's `options` on its event `loop`;
    `respond(sock, pieces)` sends a reply (an iterable of bytes) and closes the socket."""

    def __init__(self, options, loop, respond):
        self.options = options
        self._loop = loop
        self._respond = respond
        # What every command inherits: our environment, less what describes our own
        # relation to systemd (sd_listen_fds(3): children must not see it) and a client
        # key the service's environment may hold.
        hidden = systemd.SERVICE_VARIABLES + (KEY_VARIABLE,)
        self._base_env = dict((name, value) for name, value in os.environ.items()
                              if name not in hidden)
        if os.getpid() == 1:
            # A container's init: orphans become our children, and must be reaped.
            spawn.reap_orphans_every(loop)
        self._running = {}  # "cluster::name" -> runs in progress, for max_running
        self._jobs = set()
        self._stopping = False
        self.requests = 0
        self.errors = 0
        self.metrics = None  # a metrics.RelayMetrics with --metrics-file

    def handle(self, sock, address, config, request):
        """Answers one complete request on `sock` under `config`: at once, or when its
        command is over."""
        grant = None
        try:
            decision = authorize(config, request, address[0] if address else "")
            grant = decision.grant
            if decision.relay is None:
                code, reply = OK, list_reply([_describe(command)
                                              for command in decision.listing])
            else:
                self._start(_Job(sock, address, request, grant, decision.relay))
                return
        except Refused as error:
            # The grant is known for everything after the key check, so the audit line of
            # a 1003, 1002, 2003, 2004 or 2007 still says which key asked.
            grant = error.grant
            code, reply = error.code, error_reply(error.code, error.message)
        except RelayError as error:
            code, reply = error.code, error_reply(error.code, error.message)
        except Exception:
            log.exception("internal error while serving %s %s", format_address(address),
                          request.command)
            code, reply = INTERNAL_ERROR, error_reply(INTERNAL_ERROR)
        self._answer(sock, address, grant, request, code, reply)

    @property
    def running(self):
        """How many commands are running."""
        return len(self._jobs)

    def client_gone(self, sock):
        """The client on `sock` went away while its command runs (the server has closed
        the socket): the command runs on, and when it ends its reply is dropped and its
        audit line says `client_gone=true`."""
        for job in self._jobs:
            if job.sock is sock:
                job.gone = True  # (a streamed job's client going away: _stream_gone)
                return

    def stop_commands(self):
        """Ends every running command as a timeout would; their clients get 3003."""
        self._stopping = True
        for job in list(self._jobs):
            job.run.cancel()

    def abort_commands(self):
        """Kills what is still running and drops its connection, without a reply."""
        for job in list(self._jobs):
            job.run.abort()
            job.sock.close()
        self._jobs.clear()

    def _timeout(self, command):
        return command.policy.effective("timeout", self.options)[0]

    def _start(self, job):
        """Starts an authorized command within its max_running."""
        command = job.relay
        policy = command.policy
        shell = policy.effective("shell", self.options)[0]
        argv = executor.build_argv(command, job.request.arguments, shell)
        env = self._command_env(job.address, job.request, job.grant)
        if job.request.stream:
            job.live = Stream(functools.partial(self._stream_gone, job))
            job.streamer = streaming.Streamer(self._loop, job.live)
        self._claim_max_running(command)
        try:
            job.run = executor.Run(self._loop, argv, functools.partial(self._finished, job),
                                   self._timeout(command) or None,
                                   policy.effective("max_output", self.options)[0],
                                   env=env, cwd=policy.cwd,
                                   on_error=functools.partial(self._failed, job),
                                   on_output=job.streamer and job.streamer.output)
        except BaseException:
            self._release_max_running(command)
            raise
        self._jobs.add(job)
        if job.live is not None:
            # Started: from now on the reply is event lines, then the final line.
            job.streamer.run = job.run
            self._respond(job.sock, job.live)

    def _stream_gone(self, job):
        """The client of a streamed command went away (a reset, a write error, nothing
        taken within --request-timeout): the command, whose output has nowhere to go,
        is ended as at a timeout, once the writer's call has returned."""
        job.gone = True
        log.info("client=%s went away while its command streams; the command is ended",
                 format_address(job.address))
        self._loop.call_at(time.monotonic(), functools.partial(self._end_gone, job))

    def _end_gone(self, job):
        job.streamer.discard()
        job.run.cancel()

    def _finished(self, job, outcome):
        """The command of `job` is over: reply."""
        self._jobs.discard(job)
        self._release_max_running(job.relay)
        try:
            if job.streamer is not None:
                job.streamer.close()
            code, reply = _reply_for(outcome, self._timeout(job.relay), self._stopping,
                                     job.live is not None)
        except Exception:
            self._failed(job)
            return
        self._answer(job.sock, job.address, job.grant, job.request, code, reply, outcome,
                     job.gone, job.live)

    def _failed(self, job):
        """Running the command of `job` failed unexpectedly (called inside the except
        block): log the traceback, release what it held, answer 9999."""
        log.exception("internal error while serving %s %s", format_address(job.address),
                      job.request.command)
        if job in self._jobs:
            self._jobs.discard(job)
            self._release_max_running(job.relay)
        self._answer(job.sock, job.address, job.grant, job.request, INTERNAL_ERROR,
                     error_reply(INTERNAL_ERROR), gone=job.gone, live=job.live)

    def _answer(self, sock, address, grant, request, code, reply, outcome=None,
                gone=False, live=None):
        """Audits, and sends the reply (the final line of a `live` stream)."""
        self.audit(logging.INFO, address, grant, request, code, outcome, gone)
        if live is not None:
            live.end(iter_reply(reply))
        elif not gone:
            self._respond(sock, iter_reply(reply))

    def _claim_max_running(self, command):
        """Counts a run of `command`; raises RelayError(3005) past its max_running."""
        limit = command.policy.max_running
        if limit is None:
            return
        running = self._running.get(command.full_name, 0)
        if running >= limit:
            raise RelayError(ALREADY_RUNNING, "command already running (max_running "
                             "is %d)" % limit)
        self._running[command.full_name] = running + 1

    def _release_max_running(self, command):
        if command.policy.max_running is None:
            return
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

    def audit(self, level, address, grant, request, code, outcome=None, gone=False):
        """Counts a request and writes its audit line (the key itself never appears);
        `gone`: the client went away before its reply."""
        self.requests += 1
        if code != OK:
            self.errors += 1
        _audit(level, address, grant, request, code, outcome, gone)
        if self.metrics is not None:
            self.metrics.request_done(request, code, outcome)


def _describe(command):
    """One entry of the `::list` reply."""
    policy = command.policy
    low, high = policy.argument_limits()
    return {"command": command.full_name, "description": policy.description,
            "min_args": low, "max_args": high}


def _reply_for(outcome, timeout, stopping=False, streamed=False):
    """Returns (code, reply object) for a command that ran; `streamed`: its output went
    out in event lines, so the message says how it ended."""
    if streamed and not outcome.timed_out:
        code = OK if outcome.exit_code == 0 else COMMAND_FAILED
        reply = command_reply(code, _how_it_ended(outcome.exit_code), outcome)
        reply["streamed"] = True
        return code, reply
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
    reply = command_reply(code, message, outcome)
    if streamed:
        reply["streamed"] = True
    return code, reply


def _how_it_ended(exit_code):
    if exit_code is not None and exit_code < 0:
        return "command killed by signal %d" % -exit_code
    return "command exited with status %s" % exit_code


def format_address(address):
    """`host:port`, `[v6 host]:port`, or `-` for no address."""
    if not address:
        return "-"
    host, port = address[0], address[1]
    if port is None:
        return str(host)
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def _audit(level, address, grant, request, code, outcome, gone=False):
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
    log.log(level, "client=%s key=%s command=%s arguments=%s code=%d exit=%s "
            "duration_ms=%s%s",
            format_address(address), json.dumps(grant.label) if grant else "-", command,
            arguments, code,
            outcome.exit_code if outcome is not None else "-",
            outcome.duration_ms if outcome is not None else "-",
            " client_gone=true" if gone else "")
