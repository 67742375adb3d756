"""The wire protocol: request framing and validation, and reply encoding.

Sans-IO: this module turns bytes into a `Request` (or raises `RelayError` carrying the code
to answer with) and turns a reply into bytes. It never touches a socket, a thread or a
process; the server does all the IO.
"""

import json
import re

# The reply codes and their exception have their own home; the protocol's API names them.
from .codes import (  # noqa: F401
    OK, AUTH_FAILED, CLUSTER_NOT_ALLOWED, ADDRESS_NOT_ALLOWED, BAD_JSON, BAD_FIELD,
    UNKNOWN_CLUSTER, UNKNOWN_COMMAND, REQUEST_TOO_LARGE, REQUEST_TIMEOUT,
    ARGUMENTS_NOT_ALLOWED, COMMAND_FAILED, COMMAND_NOT_STARTED, COMMAND_TIMED_OUT,
    SERVER_BUSY, ALREADY_RUNNING, INTERNAL_ERROR, CODES, RelayError)

DEFAULT_CLUSTER = "default"
CLUSTER_SEPARATOR = "::"
# The reserved command that lists what the calling key may run, instead of running it.
LIST_COMMAND = "::list"
# The environment variable `call` reads the key from; commands never inherit it.
KEY_VARIABLE = "USCMDRELAY_AUTH_KEY"
FIELDS = ("auth_key", "command", "arguments", "stream")
# What a plain-text request on a TLS listener is answered (code 2001, in plain text);
# `call` recognises it.
PLAIN_ON_TLS = "this server speaks TLS: connect with TLS (uscmdrelay call --tls)"
# How deep arrays and objects may nest. A request needs 2 (the object and its
# arguments); the json module recurses once per level and raises RecursionError, not
# ValueError, somewhere near 1000, so the depth is refused before json sees the text.
MAX_DEPTH = 32
_TOO_DEEP = "invalid JSON: nested deeper than %d levels" % MAX_DEPTH

_UTF8_BOM = b"\xef\xbb\xbf"


class Request(object):
    """A validated request: `auth_key`, `cluster`, `name` (the command), `arguments`, and
    `stream` (its output is sent as it comes, in event lines before the final one)."""

    __slots__ = ("auth_key", "cluster", "name", "arguments", "stream")

    def __init__(self, auth_key, cluster, name, arguments, stream=False):
        self.auth_key = auth_key
        self.cluster = cluster
        self.name = name
        self.arguments = arguments
        self.stream = stream

    @property
    def command(self):
        """The command as `cluster::name`, the spelling logs and replies use."""
        if self.is_list:
            return LIST_COMMAND
        return self.cluster + CLUSTER_SEPARATOR + self.name

    @property
    def is_list(self):
        """True for the reserved `::list` request."""
        return self.cluster is None

    def __repr__(self):
        # Never show the key, not even in a debugger or a traceback.
        return "Request(command=%r, arguments=%r)" % (self.command, self.arguments)


# ---------------------------------------------------------------------------------------
# Framing

# What the scanner looks for: outside a string, the structure; inside one, its end,
# an escape, or a raw newline (which JSON forbids inside strings).
_OUTSIDE_STRING = re.compile(rb'["{}\[\]\n]')
_INSIDE_STRING = re.compile(rb'["\\\n]')
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")


class RequestReader(object):
    """Collects a request's bytes and says when they end.

    Feed it bytes with `feed()` and call `finish()` at end of input. A request ends at a
    newline once the bytes so far form a complete JSON value, or at end of input. `feed()`
    returns the `Request` once the request has ended and None while more bytes are needed;
    both raise `RelayError` as soon as the bytes are too many or can never become valid.

    To decide where a request may end without re-parsing the whole buffer at every
    newline (quadratic for a slow-drip client), it keeps a small scanner state: inside a
    string or not, and the bracket depth. A full parse runs at a newline at depth 0, and
    otherwise only when the bytes before the newline have doubled since the last one,
    which keeps the total work linear while still catching `{"a": not json` at its first
    newline.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._scanned = 0          # bytes of the buffer the scanner has seen
        self._in_string = False
        self._escaped = False      # the previous byte inside a string was a backslash
        self._depth = 0
        self._started = False      # a byte other than whitespace was seen
        self._last_parse_size = 0

    @property
    def received(self):
        """How many bytes of the request have arrived."""
        return len(self._buffer)

    def feed(self, data):
        """Adds received bytes; returns the `Request` once complete, else None."""
        if len(self._buffer) + len(data) > self.max_bytes:
            raise RelayError(REQUEST_TOO_LARGE,
                             "request is larger than %d bytes" % self.max_bytes)
        first = not self._buffer
        self._buffer += data
        if first and data.endswith(b"\n") and data.count(b"\n") == 1:
            # Most requests arrive whole, as one line. If it parses, it is the request the
            # scanner would find at that newline; if not, the scanner decides, since it
            # tells a bad request from one that is not complete yet.
            try:
                return parse_request(bytes(data[:-1]))
            except RelayError:
                pass
        return self._scan()

    def finish(self):
        """End of input: returns the `Request` or raises `RelayError`."""
        text = _strip_bom(bytes(self._buffer))
        if not text.strip():
            raise RelayError(BAD_JSON, "empty request")
        return parse_request(text)

    def _scan(self):
        buffer = self._buffer
        pos = self._scanned
        end = len(buffer)
        while pos < end:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    if buffer[pos] == 0x0A:  # a backslash cannot escape a raw newline
                        raise RelayError(BAD_JSON, "invalid JSON: newline inside a string")
                    pos += 1
                    continue
                match = _INSIDE_STRING.search(buffer, pos)
                if match is None:
                    pos = end
                    break
                char = buffer[match.start()]
                pos = match.end()
                if char == 0x22:     # "
                    self._in_string = False
                elif char == 0x5C:   # backslash
                    self._escaped = True
                else:                # a raw newline inside a string: never valid JSON
                    raise RelayError(BAD_JSON, "invalid JSON: newline inside a string")
                continue
            if not self._started:
                match = _NOT_WHITESPACE.search(buffer, pos)
                if match is None:
                    pos = end
                    break
                self._started = True
                pos = match.start()
            match = _OUTSIDE_STRING.search(buffer, pos)
            if match is None:
                pos = end
                break
            char = buffer[match.start()]
            pos = match.end()
            if char == 0x22:
                self._in_string = True
            elif char in (0x7B, 0x5B):     # { [
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise RelayError(BAD_JSON, _TOO_DEEP)
            elif char in (0x7D, 0x5D):     # } ]
                self._depth -= 1
                if self._depth < 0:
                    raise RelayError(BAD_JSON, "invalid JSON: unbalanced %r" % chr(char))
            else:
                request = self._at_newline(pos - 1)
                if request is not None:
                    self._scanned = pos
                    return request
        self._scanned = pos
        return None

    def _at_newline(self, newline_at):
        """Returns the Request if the bytes before `newline_at` are one, else None."""
        if not self._started:
            return None
        # Measured by what is parsed (the bytes before the newline), not by the buffer:
        # a multi-line chunk received at once must not skip the checks of its later lines.
        if self._depth > 0 and newline_at < 2 * self._last_parse_size:
            return None
        self._last_parse_size = max(newline_at, 1)
        text = bytes(self._buffer[:newline_at])
        if self._depth == 0 and not _strip_bom(text).strip():
            # Only a BOM so far: a blank line after it must not end the request as
            # "empty". Starting afresh keeps this check to once per request.
            self._started = False
            return None
        if self._depth > 0:
            # Cannot be complete yet: parse only to catch what can never become valid.
            _raise_unless_incomplete(text)
            return None
        return parse_request(text)


def _strip_bom(data):
    return data[3:] if data.startswith(_UTF8_BOM) else data


def _decode(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RelayError(BAD_JSON, "request is not valid UTF-8 (byte %d)" % error.start)


def _raise_unless_incomplete(data):
    """Raises RelayError(2001) unless `data` is a prefix that more bytes could complete."""
    text = _decode(_strip_bom(data)).strip()
    try:
        _json_value(text)
    except ValueError as error:
        # The json module reports where it gave up: at the very end means it simply ran
        # out of input (a prefix of something valid); anywhere before is a real error.
        if getattr(error, "pos", -1) >= len(text):
            return
        raise RelayError(BAD_JSON, "invalid JSON: %s" % _json_reason(error))


# ---------------------------------------------------------------------------------------
# Parsing and validation

class _Pairs(list):
    """A JSON object as its list of (name, value) pairs, so duplicates stay visible."""


def _reject_constant(name):
    # json accepts NaN and Infinity, which are not JSON.
    raise ValueError("%s is not valid JSON" % name)


_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_reject_constant)


def _json_reason(error):
    return getattr(error, "msg", None) or str(error)


# Outside strings, a bracket; a string (escapes included) is one token, so brackets in
# it do not count. An unterminated string runs to the end.
_DEPTH_TOKEN = re.compile(r'[\[\]{}]|"(?:[^"\\]+|\\.)*"?', re.S)


def _json_value(text):
    """json's value for `text`. Raises ValueError as json does, and RelayError(2001) for
    arrays and objects nested deeper than MAX_DEPTH."""
    # Fewer brackets than the limit cannot nest deeper than it: the usual request costs
    # two str.count() calls.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        depth = 0
        for match in _DEPTH_TOKEN.finditer(text):
            char = match.group()[0]
            if char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise RelayError(BAD_JSON, _TOO_DEEP)
            elif char != '"':
                depth -= 1
    try:
        return _DECODER.decode(text)
    except RecursionError:
        # Not reachable past the check above; kept so that no nesting can ever escape
        # as anything but 2001.
        raise RelayError(BAD_JSON, _TOO_DEEP)


def parse_request(data):
    """Parses one whole request (bytes); returns a `Request` or raises `RelayError`."""
    text = _decode(_strip_bom(data)).strip()
    if not text:
        raise RelayError(BAD_JSON, "empty request")
    try:
        value = _json_value(text)
    except ValueError as error:
        raise RelayError(BAD_JSON, "invalid JSON: %s" % _json_reason(error))
    if not isinstance(value, _Pairs):
        raise RelayError(BAD_JSON, "request must be a JSON object")
    return validate_request(value)


def validate_request(pairs):
    """Checks the fields of a request object given as (name, value) pairs."""
    fields = {}
    for name, value in pairs:
        if name not in FIELDS:
            raise RelayError(BAD_FIELD, "unknown field %s" % json.dumps(name))
        if name in fields:
            raise RelayError(BAD_FIELD, "field %r given more than once" % name)
        fields[name] = value

    auth_key = fields.get("auth_key")
    _check_string("auth_key", auth_key)
    command = fields.get("command")
    _check_string("command", command)
    cluster, name = split_command(command)

    arguments = fields.get("arguments", [])
    if not isinstance(arguments, list) or isinstance(arguments, _Pairs):
        raise RelayError(BAD_FIELD, "arguments must be a list of strings")
    for index, argument in enumerate(arguments):
        _check_string("arguments[%d]" % index, argument, allow_empty=True)
    if cluster is None and arguments:
        raise RelayError(BAD_FIELD, "%s takes no arguments" % LIST_COMMAND)
    stream = fields.get("stream", False)
    if not isinstance(stream, bool):
        raise RelayError(BAD_FIELD, "stream must be true or false")
    return Request(auth_key, cluster, name, arguments, stream)


def _check_string(field, value, allow_empty=False):
    if value is None:
        raise RelayError(BAD_FIELD, "missing field %r" % field)
    if not isinstance(value, str):
        raise RelayError(BAD_FIELD, "%s must be a string" % field)
    if not value and not allow_empty:
        raise RelayError(BAD_FIELD, "%s must not be empty" % field)
    if "\x00" in value:
        raise RelayError(BAD_FIELD, "%s contains a NUL character" % field)
    try:
        # A lone surrogate (an escape like \ud800) cannot reach argv or a log line.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RelayError(BAD_FIELD, "%s is not valid Unicode" % field)


def split_command(command):
    """Returns (cluster, name) for `name` or `cluster::name`; raises RelayError(2002).

    The reserved `::list` gives (None, "::list").
    """
    if command == LIST_COMMAND:
        return None, LIST_COMMAND
    if CLUSTER_SEPARATOR in command:
        cluster, name = command.split(CLUSTER_SEPARATOR, 1)
    else:
        cluster, name = DEFAULT_CLUSTER, command
    if not cluster or not name or CLUSTER_SEPARATOR in name:
        raise RelayError(BAD_FIELD, "command must be 'name' or 'cluster::name', got %s"
                         % json.dumps(command))
    return cluster, name


# ---------------------------------------------------------------------------------------
# Replies

# A string value longer than this is encoded in slices of this many characters.
REPLY_SLICE_CHARS = 65536


def encode_reply(reply):
    """Returns the bytes of one reply: a JSON object on one line, ending in a newline."""
    return (json.dumps(reply, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode(
        "utf-8")


def iter_reply(reply):
    """Yields the bytes of `encode_reply(reply)` in pieces.

    A command's output may be megabytes, and JSON escapes can make it six times larger
    (a NUL becomes \\u0000): encoding long strings slice by slice keeps the server's
    memory near the size of the output instead of several times it.
    """
    if not any(isinstance(value, str) and len(value) > REPLY_SLICE_CHARS
               for value in reply.values()):
        yield encode_reply(reply)
        return
    separator = "{"
    for name, value in reply.items():
        head = separator + json.dumps(name) + ": "
        separator = ", "
        if not (isinstance(value, str) and len(value) > REPLY_SLICE_CHARS):
            yield (head + json.dumps(value, ensure_ascii=False)).encode("utf-8")
            continue
        yield (head + '"').encode("utf-8")
        for start in range(0, len(value), REPLY_SLICE_CHARS):
            piece = value[start:start + REPLY_SLICE_CHARS]
            yield json.dumps(piece, ensure_ascii=False)[1:-1].encode("utf-8")
        yield b'"'
    yield b"}\n"


def error_reply(code, message=None):
    """Returns the reply object for an error code, with CODES' text unless `message`."""
    return {"status": "error", "message": message if message is not None else CODES[code],
            "code": code}


def list_reply(commands):
    """Returns the reply to `::list`: `commands` is a list of dicts, one per command."""
    return {"status": "success", "message": "%d command%s" % (
        len(commands), "" if len(commands) == 1 else "s"), "code": OK,
            "commands": commands}


def command_reply(code, message, outcome):
    """Returns the reply object for a command that was started (see executor.Outcome)."""
    return {
        "status": "success" if code == OK else "error",
        "message": message,
        "code": code,
        "exit_code": outcome.exit_code,
        "stdout": outcome.stdout_text(),
        "stderr": outcome.stderr_text(),
        "duration_ms": outcome.duration_ms,
        "truncated": outcome.truncated,
    }
