"""`uscmdrelay check`: a Nagios/Icinga check client with check_nrpe's option names.

It follows the plugin API: the remote command's exit status 0-3 and its stdout pass
through untouched (perfdata and long output included), and every other outcome is one
line on stdout and a plugin state, never 255, a traceback or an empty stdout. The
exchange itself is `client`'s; this module only maps its outcomes to plugin states.
"""

import argparse
import signal
import sys

from .client import CallError, exchange, read_key, typed_text, write_text
from .client_options import VALUE_FLAGS, add_key_and_tls_options
from .codes import COMMAND_FAILED, COMMAND_TIMED_OUT, OK
from .options import MAX_PORT
from .reasons import reason

STATE_OK, STATE_WARNING, STATE_CRITICAL, STATE_UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
DEFAULT_PORT = 7777
DEFAULT_TIMEOUT_SECONDS = 10.0  # check_nrpe's
MAX_TIMEOUT_SECONDS = 86400.0
# check's options that take a value: the word after them is never the `-a` that starts
# the arguments.
VALUE_OPTIONS = ("-H", "--host", "-p", "--port", "-c", "--command", "-t",
                 "--timeout") + VALUE_FLAGS
ARGUMENTS_OPTIONS = ("-a", "--args")


class UsageError(Exception):
    """A bad command line; str() is the one line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting 2: a plugin
    reports a bad command line as UNKNOWN, on stdout, in one line."""

    def error(self, message):
        raise UsageError(message)


def timeout_value(text):
    """`SECONDS[:STATE]` (check_nrpe's -t) -> (seconds, state or None); raises
    argparse.ArgumentTypeError."""
    seconds_text, _, state_text = text.partition(":")
    try:
        seconds = float(seconds_text)
    except ValueError:
        seconds = None
    if seconds is None or seconds != seconds or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(
            "%r: SECONDS must be a number above 0 and at most %d" % (text, MAX_TIMEOUT_SECONDS))
    if not _:
        return seconds, None
    state = _state(state_text)
    if state is None:
        raise argparse.ArgumentTypeError(
            "%r: STATE must be one of ok, warning, critical, unknown (or 0 to 3)" % text)
    return seconds, state


def _state(text):
    text = text.strip().upper()
    if text in ("0", "1", "2", "3"):
        return int(text)
    return STATE_NAMES.index(text) if text in STATE_NAMES else None


def _port(text):
    if not text.isdigit() or not 1 <= int(text) <= MAX_PORT:
        raise argparse.ArgumentTypeError("%r is not a port number (1 to %d)" % (text, MAX_PORT))
    return int(text)


def build_parser():
    parser = _Parser(
        prog="uscmdrelay check", allow_abbrev=False,
        description="Run COMMAND on a uscmdrelay server as a Nagios/Icinga plugin: its "
                    "exit status 0-3 and its output pass through; anything else is "
                    "UNKNOWN (or the -t state for a timeout), on one line. The key comes "
                    "from $USCMDRELAY_AUTH_KEY or a key file (never the command line).")
    parser.add_argument("-H", "--host", default="127.0.0.1",
                        help="server name or address (default: 127.0.0.1)")
    parser.add_argument("-p", "--port", type=_port,
                        default=DEFAULT_PORT, help="server port (default: 7777)")
    parser.add_argument("-c", "--command", required=True, metavar="COMMAND",
                        help="'name' or 'cluster::name'")
    parser.add_argument("-t", "--timeout", type=timeout_value, metavar="SECONDS[:STATE]",
                        default=(DEFAULT_TIMEOUT_SECONDS, None),
                        help="seconds the whole check may take (default: 10), and the "
                             "state to report when it times out or the command does "
                             "(ok, warning, critical, unknown; default: critical)")
    parser.add_argument("-u", "--unknown-timeout", action="store_true",
                        help="report the client's own timeouts (connecting, waiting for "
                             "the reply) as UNKNOWN")
    add_key_and_tls_options(parser)
    # Only for --help: run_check sets the arguments aside before argparse.
    parser.add_argument("-a", "--args", nargs="*", metavar="ARG", dest="help_arguments",
                        help="the command's arguments: every word after -a, as it is")
    return parser


def split_arguments(words):
    """Splits check's words at `-a`: returns (options, arguments or [])."""
    for index, word in enumerate(words):
        if word in ARGUMENTS_OPTIONS and not (index and words[index - 1] in VALUE_OPTIONS):
            return words[:index], words[index + 1:]
    return words, []


def run_check(words, stdout=None):
    """Runs `check` with its command-line `words`; returns the plugin state (0-3)."""
    stdout = stdout or sys.stdout
    try:
        return _check(words, stdout)
    except Exception as error:  # a bug: still one line and UNKNOWN, never a traceback
        return _report(stdout, STATE_UNKNOWN, "internal error: %s" % reason(error))


def _check(words, stdout):
    options, arguments = split_arguments(list(words))
    try:
        args = build_parser().parse_args(options)
    except UsageError as error:
        return _report(stdout, STATE_UNKNOWN, "usage: %s" % error)
    except SystemExit:  # --help: plugins answer it with UNKNOWN, as check_nrpe does
        return STATE_UNKNOWN
    args.timeout, timeout_state = args.timeout
    if timeout_state is None:
        timeout_state = STATE_CRITICAL
    try:
        key = read_key(args.key_file)
    except CallError as error:
        return _report(stdout, STATE_UNKNOWN, str(error))
    request = {"auth_key": key, "command": typed_text(args.command),
               "arguments": [typed_text(argument) for argument in arguments]}
    try:
        _, reply = exchange(args, request, timeout_option="-t")
    except CallError as error:
        if error.timed_out:
            state = STATE_UNKNOWN if args.unknown_timeout else timeout_state
        else:
            state = STATE_UNKNOWN
        return _report(stdout, state, str(error))
    return _reply_state(reply, stdout, timeout_state)


def _reply_state(reply, stdout, timeout_state):
    code = reply.get("code")
    exit_code = reply.get("exit_code")
    if code == COMMAND_TIMED_OUT:
        return _report(stdout, timeout_state,
                       str(CallError(reply.get("message") or "timed out", code)))
    if code not in (OK, COMMAND_FAILED) or not isinstance(exit_code, int):
        return _report(stdout, STATE_UNKNOWN,
                       str(CallError(reply.get("message") or "error", code)))
    output = _output(reply)
    if exit_code < 0:
        return _report(stdout, STATE_UNKNOWN, "the command was killed by signal %d (%s)"
                       % (-exit_code, _signal_name(-exit_code)), output)
    if exit_code > STATE_UNKNOWN:
        return _report(stdout, STATE_UNKNOWN, "the command exited with status %d (a "
                       "plugin exits 0 to 3)" % exit_code, output)
    if not output:
        return _report(stdout, exit_code, "the command exited %d and printed nothing"
                       % exit_code)
    write_text(stdout, output)
    return exit_code


def _output(reply):
    """The command's stdout, or its stderr if stdout is empty."""
    return reply.get("stdout") or reply.get("stderr") or ""


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _report(stdout, state, message, output=""):
    """Writes `STATE: uscmdrelay: message` (and the command's output after it, if any);
    returns `state`."""
    line = "%s: uscmdrelay: %s\n" % (STATE_NAMES[state], " ".join(message.split("\n")))
    write_text(stdout, line + output)
    return state
