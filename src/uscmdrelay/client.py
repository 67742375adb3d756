"""`uscmdrelay call`: a client that behaves like `ssh host cmd`.

It sends one request and prints the command's stdout and stderr as they were, as they
come (it asks the server to stream them; an older server that cannot is asked again
without), exiting with the command's exit status (128+N for death by signal N). Anything that keeps the
command from running or finishing (refused key, unknown command, timeout, busy server,
connection or TLS failure) prints `uscmdrelay: <message> (code N)` and exits 255.
"""

import json
import os
import socket
import struct
import sys
import time

from .client_options import TLS_OPTIONS, VALUE_FLAGS
from .exits import EXIT_INTERRUPTED, EXIT_RELAY_ERROR, EXIT_USAGE
from .protocol import (BAD_FIELD, BAD_JSON, COMMAND_FAILED, KEY_VARIABLE, LIST_COMMAND,
                       OK, PLAIN_ON_TLS)
from .reasons import reason

# call's options that take a value (split_argv must skip the value).
VALUE_OPTIONS = ("--host", "--port", "--timeout") + VALUE_FLAGS
MAX_REPLY_BYTES = 64 * 1024 * 1024


class CallError(Exception):
    """The call failed before a reply could be used; str() is the message."""

    def __init__(self, message, code=None, timed_out=False):
        Exception.__init__(self, message)
        self.code = code
        self.timed_out = timed_out  # the server did not answer (or accept) in time

    def __str__(self):
        text = Exception.__str__(self)
        return text if self.code is None else "%s (code %d)" % (text, self.code)


def run_call(args, stdout=None, stderr=None):
    """Runs `call`; returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not args.list and not args.command:
        stderr.write("uscmdrelay: call needs a COMMAND (or --list)\n")
        return EXIT_USAGE
    try:
        key = read_key(args.key_file)
    except CallError as error:
        stderr.write("uscmdrelay: %s\n" % error)
        return EXIT_USAGE
    request = {"auth_key": key,
               "command": LIST_COMMAND if args.list else typed_text(args.command)}
    if not args.list:
        request["arguments"] = [typed_text(argument) for argument in args.arguments]
    stream = not args.list and not getattr(args, "no_stream", False)
    if stream:
        request["stream"] = True
    try:
        raw, reply = exchange(args, request, _event_writer(args.json, stdout, stderr)
                              if stream else None)
        if stream and is_stream_refused(reply):
            del request["stream"]  # a server older than streaming: ask for one reply
            raw, reply = exchange(args, request)
    except CallError as error:
        stderr.write("uscmdrelay: %s\n" % error)
        return EXIT_RELAY_ERROR
    except KeyboardInterrupt:
        # Ctrl-C: the connection was reset, which ends the command if it streams.
        return EXIT_INTERRUPTED
    if args.json:
        write_text(stdout, raw.decode("utf-8", "replace"))
    elif args.list and reply.get("code") == OK:
        _print_list(reply.get("commands") or [], stdout)
        return 0
    else:
        _write_output(reply, stdout, stderr)
    if args.json and args.list and reply.get("code") == OK:
        return 0
    return exit_status(reply, stderr, quiet=args.json)


def is_stream_refused(reply):
    """True for the 2002 a server without streaming answers a `stream` field with."""
    return (reply.get("code") == BAD_FIELD
            and '"stream"' in str(reply.get("message", "")))


def _event_writer(as_json, stdout, stderr):
    """on_event for exchange(): an event's data to our stdout or stderr as it comes, or
    (--json) the line as received."""
    def write_event(raw, event):
        if as_json:
            write_text(stdout, raw.decode("utf-8", "replace"))
        elif isinstance(event.get("data"), str):
            write_text(stderr if event["stream"] == "stderr" else stdout, event["data"])
    return write_event


def typed_text(word):
    """A command-line word as the user typed it: in a C locale Python decodes argv as
    ASCII with surrogate escapes, which would reach the server as invalid text."""
    return os.fsencode(word).decode("utf-8", "replace")


def split_argv(tokens):
    """Splits `call`'s words into (options, COMMAND or None, arguments).

    argparse would take a `--` meant for the remote command as its own, so everything
    from COMMAND on is set aside before argparse sees the options.
    """
    for index, token in enumerate(tokens):
        if token == "--":
            rest = tokens[index + 1:]
            return tokens[:index], (rest[0] if rest else None), rest[1:]
        if token.startswith("-") and token != "-":
            continue  # an option
        if index > 0 and tokens[index - 1] in VALUE_OPTIONS:
            continue  # the value of the option before it (`--host H`, not `--host=H`)
        return tokens[:index], token, tokens[index + 1:]
    return tokens, None, []


def read_key(key_file):
    """The auth key from `key_file`, else from the environment; raises CallError."""
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as handle:
                key = handle.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CallError("cannot read key file %s: %s"
                            % (key_file, getattr(error, "strerror", None) or error))
        if not key:
            raise CallError("key file %s is empty" % key_file)
        return key
    key = os.environ.get(KEY_VARIABLE, "")
    if not key:
        raise CallError("no auth key: set %s or use --key-file FILE" % KEY_VARIABLE)
    return key


def exchange(args, request, on_event=None, timeout_option="--timeout"):
    """Sends `request`; returns (raw reply bytes, reply object). Raises CallError, with
    `timed_out` set when `args.timeout` (the flag `timeout_option`) ran out.

    With `on_event` (for a request with `"stream": true`), each event line before the
    final reply is handed to `on_event(raw line, event object)` as it arrives."""
    deadline = time.monotonic() + args.timeout
    context = _tls_context(args) if uses_tls(args) else None
    where = "%s port %d" % (args.host, args.port)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except socket.timeout:
        raise CallError("cannot connect to %s: timed out" % where, timed_out=True)
    except OSError as error:
        raise CallError("cannot connect to %s: %s" % (where, reason(error)))
    try:
        if context is not None:
            try:
                sock = context.wrap_socket(
                    sock, server_hostname=args.tls_server_name or args.host)
            except (OSError, ValueError) as error:
                raise CallError("TLS with %s failed: %s" % (where, reason(error)))
        data = (json.dumps(request) + "\n").encode("utf-8")
        try:
            _set_remaining(sock, deadline)
            sock.sendall(data)
            raw = (_read_reply(sock, deadline) if on_event is None
                   else _read_events(sock, deadline, on_event))
        except socket.timeout:
            _reset_on_close(sock)
            raise CallError("no reply from %s within %g s (%s)"
                            % (where, args.timeout, timeout_option), timed_out=True)
        except KeyboardInterrupt:
            _reset_on_close(sock)
            raise
        except ConnectionResetError as error:
            if context is None:
                # What a TLS server of an older version answers a plain-text request.
                raise CallError("%s reset the connection; if it speaks TLS: use --tls"
                                % where)
            raise CallError("connection to %s failed: %s" % (where, reason(error)))
        except OSError as error:
            raise CallError("connection to %s failed: %s" % (where, reason(error)))
    finally:
        sock.close()
    try:
        reply = json.loads(raw.decode("utf-8"))
        if not isinstance(reply, dict) or not isinstance(reply.get("code"), int):
            raise ValueError("not a reply object")
    except ValueError:
        raise CallError("%s sent no valid reply (%d bytes)" % (where, len(raw)))
    if context is None and (reply.get("code"), reply.get("message")) == (BAD_JSON,
                                                                          PLAIN_ON_TLS):
        raise CallError("%s speaks TLS: use --tls" % where)
    return raw, reply


def _reset_on_close(sock):
    """Makes close() reset the connection: a call that gives up must free its place at
    the server at once. The server cannot tell a plain close from a half-close (after
    which a client still reads its reply), so it keeps that connection's place until
    the command ends; a reset says the client is gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # the connection is gone already


def uses_tls(args):
    """True with --tls or any other TLS option."""
    return args.tls or any(getattr(args, name) is not None for name in TLS_OPTIONS)


def _set_remaining(sock, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("timed out")
    sock.settimeout(remaining)


def _read_reply(sock, deadline):
    chunks = []
    size = 0
    while True:
        _set_remaining(sock, deadline)
        try:
            data = sock.recv(65536)
        except OSError as error:
            # A TLS server that closes without close_notify still sent a whole reply.
            if chunks and "EOF" in str(error):
                break
            raise
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if size > MAX_REPLY_BYTES:
            raise CallError("reply larger than %d bytes" % MAX_REPLY_BYTES)
        if data.endswith(b"\n"):
            break  # a reply is exactly one line
    return b"".join(chunks)


def _read_events(sock, deadline, on_event):
    """Reads lines, handing each event to `on_event`; returns the final line (bytes)."""
    buffer = bytearray()
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_REPLY_BYTES:
                raise CallError("reply line larger than %d bytes" % MAX_REPLY_BYTES)
            _set_remaining(sock, deadline)
            try:
                data = sock.recv(65536)
            except OSError as error:
                if buffer and "EOF" in str(error):
                    data = b""
                else:
                    raise
            if not data:
                return bytes(buffer)  # the final line without its newline, or nothing
            buffer += data
            continue
        line = bytes(buffer[:newline + 1])
        del buffer[:newline + 1]
        event = _event(line)
        if event is None:
            return line
        on_event(line, event)


def _event(line):
    """The object of an event line (one with a string `stream`), else None."""
    try:
        event = json.loads(line.decode("utf-8"))
    except ValueError:
        return None
    if isinstance(event, dict) and isinstance(event.get("stream"), str):
        return event
    return None


def _tls_context(args):
    from .tls import TLSError, client_context  # only a TLS call pays for importing ssl
    try:
        return client_context(args.tls_ca, args.tls_cert, args.tls_key)
    except TLSError as error:
        raise CallError("TLS setup failed: %s" % error)


def _write_output(reply, stdout, stderr):
    """Writes the command's own output, as it was, when the command ran."""
    if "exit_code" not in reply:
        return
    write_text(stdout, reply.get("stdout") or "")
    write_text(stderr, reply.get("stderr") or "")


def write_text(stream, text):
    """Writes `text` as UTF-8 whatever the locale (LC_ALL=C must not turn a command's
    'é' into a UnicodeEncodeError), and flushes."""
    binary = getattr(stream, "buffer", None)
    if binary is None:
        stream.write(text)
    else:
        stream.flush()
        binary.write(text.encode("utf-8", "replace"))
    stream.flush()



def exit_status(reply, stderr, quiet=False):
    """The exit status for a reply, like ssh: the command's, or 255 for a relay error."""
    code = reply.get("code")
    exit_code = reply.get("exit_code")
    if code in (OK, COMMAND_FAILED) and isinstance(exit_code, int):
        return 128 - exit_code if exit_code < 0 else exit_code
    if not quiet:
        stderr.write("uscmdrelay: %s\n" % CallError(reply.get("message", "error"), code))
    return EXIT_RELAY_ERROR


def _print_list(commands, stdout):
    rows = [("COMMAND", "ARGS", "DESCRIPTION")]
    for entry in commands:
        low, high = entry.get("min_args"), entry.get("max_args")
        if low is None and high is None:
            count = "any"
        elif high == 0:
            count = "none"
        elif low == high:
            count = str(low)
        else:
            count = "%s-%s" % (low if low is not None else 0, high if high is not None else "")
        rows.append((entry.get("command", ""), count, entry.get("description") or ""))
    width = max(len(row[0]) for row in rows)
    for name, count, description in rows:
        write_text(stdout, ("%-*s  %-5s  %s" % (width, name, count, description)).rstrip() + "\n")
