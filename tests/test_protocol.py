"""Unit tests for uscmdrelay.protocol: framing, validation and reply encoding, with no IO.

Every request case is fed whole and then one byte at a time (CONVENTIONS.md #12).
"""

import json
import time
import unittest

import tests  # noqa: F401  (puts src/ on sys.path)
from uscmdrelay import protocol
from uscmdrelay.protocol import RelayError, RequestReader

MAX_BYTES = 65536
KEY = "k3y-0123456789abcdef"


def _body(**fields):
    fields.setdefault("auth_key", KEY)
    fields.setdefault("command", "echo")
    return json.dumps(fields)


def _chunkings(data):
    """The two ways every case is fed: whole, and one byte at a time."""
    return (("whole", [data]),
            ("bytewise", [data[i:i + 1] for i in range(len(data))]))


def read(chunks, max_bytes=MAX_BYTES):
    """Feeds `chunks`; returns (request, index of the chunk that ended it or None = finish)."""
    reader = RequestReader(max_bytes)
    for index, chunk in enumerate(chunks):
        request = reader.feed(chunk)
        if request is not None:
            return request, index
    return reader.finish(), None


def read_error(chunks, max_bytes=MAX_BYTES):
    """Feeds `chunks`; returns (RelayError, index of the chunk that raised or None = finish)."""
    reader = RequestReader(max_bytes)
    for index, chunk in enumerate(chunks):
        try:
            request = reader.feed(chunk)
        except RelayError as error:
            return error, index
        if request is not None:
            raise AssertionError("feed() accepted %r as %r" % (chunks, request))
    try:
        request = reader.finish()
    except RelayError as error:
        return error, None
    raise AssertionError("finish() accepted %r as %r" % (chunks, request))


class RequestReaderAcceptsTest(unittest.TestCase):

    # (name, bytes, expected cluster, name, arguments, ends at a newline (True) or finish)
    CASES = [
        ("single line with newline",
         (_body() + "\n").encode(), "default", "echo", [], True),
        ("no newline, then half-close",
         _body().encode(), "default", "echo", [], False),
        ("pretty-printed multi-line JSON",
         (json.dumps({"auth_key": KEY, "command": "ops::uptime",
                      "arguments": ["a", "b"]}, indent=4) + "\n").encode(),
         "ops", "uptime", ["a", "b"], True),
        ("pretty-printed, no final newline",
         json.dumps({"auth_key": KEY, "command": "echo"}, indent=2).encode(),
         "default", "echo", [], False),
        ("leading UTF-8 BOM",
         b"\xef\xbb\xbf" + (_body() + "\n").encode(), "default", "echo", [], True),
        ("leading UTF-8 BOM, no newline",
         b"\xef\xbb\xbf" + _body().encode(), "default", "echo", [], False),
        ("leading UTF-8 BOM then a blank line",
         b"\xef\xbb\xbf\n" + (_body() + "\n").encode(), "default", "echo", [], True),
        ("leading UTF-8 BOM then spaces before a multi-line object",
         b"\xef\xbb\xbf  \r\n" + (json.dumps({"auth_key": KEY, "command": "echo"},
                                             indent=1) + "\n").encode(),
         "default", "echo", [], True),
        ("leading and trailing whitespace and blank lines",
         b"\n\n  \t\r\n  " + _body().encode() + b"  \t\r\n\n\n", "default", "echo", [], True),
        ("CRLF line end",
         (_body() + "\r\n").encode(), "default", "echo", [], True),
        ("whitespace only after the object, then half-close",
         _body().encode() + b"   \t ", "default", "echo", [], False),
        ("cluster::name",
         (_body(command="backup::status") + "\n").encode(), "backup", "status", [], True),
        ("bare name means the default cluster",
         (_body(command="status") + "\n").encode(), "default", "status", [], True),
        ("cluster and name with single colons",
         (_body(command="a:b::check:disk") + "\n").encode(), "a:b", "check:disk", [], True),
        ("arguments with spaces, quotes, shell syntax, unicode and empty strings",
         (_body(arguments=["two words", "it's \"quoted\"", "a; rm -rf /", "$(id)",
                           "`id`", "h\u00e9llo \u2603 \U0001F600", "", "--", "*"])
          + "\n").encode(),
         "default", "echo",
         ["two words", "it's \"quoted\"", "a; rm -rf /", "$(id)", "`id`",
          "h\u00e9llo \u2603 \U0001F600", "", "--", "*"], True),
        ("arguments as raw UTF-8, not \\u escapes",
         (json.dumps({"auth_key": KEY, "command": "echo", "arguments": ["\u00e9\u2603"]},
                     ensure_ascii=False) + "\n").encode("utf-8"),
         "default", "echo", ["\u00e9\u2603"], True),
        ("escaped newline, quote and backslash inside strings",
         (_body(arguments=["a\nb", "q\"", "back\\slash", "}{]["]) + "\n").encode(),
         "default", "echo", ["a\nb", "q\"", "back\\slash", "}{]["], True),
        ("empty arguments list",
         (_body(arguments=[]) + "\n").encode(), "default", "echo", [], True),
        ("fields in any order",
         b'{"arguments": ["x"], "command": "echo", "auth_key": "' + KEY.encode()
         + b'"}\n', "default", "echo", ["x"], True),
    ]

    def test_complete_requests_are_parsed_whole_and_byte_by_byte(self):
        for name, data, cluster, command, arguments, at_newline in self.CASES:
            for how, chunks in _chunkings(data):
                with self.subTest(case=name, fed=how):
                    request, index = read(chunks)
                    self.assertEqual(request.auth_key, KEY)
                    self.assertEqual(request.cluster, cluster)
                    self.assertEqual(request.name, command)
                    self.assertEqual(request.arguments, arguments)
                    self.assertEqual(request.command, cluster + "::" + command)
                    if at_newline:
                        self.assertIsNotNone(index, "needed finish()")
                        # The request ends at the newline that completes it, not later.
                        consumed = b"".join(chunks[:index + 1])
                        self.assertTrue(consumed.rstrip(b" \t").endswith(b"\n"))
                        self.assertTrue(json.loads(consumed.decode("utf-8-sig")))
                    else:
                        self.assertIsNone(index, "ended before the half-close")

    def test_incomplete_multi_line_request_waits_for_its_final_line(self):
        lines = [b"{\n", b'  "auth_key": "' + KEY.encode() + b'",\n',
                 b'  "command": "ops::uptime",\n', b'  "arguments": [\n', b'    "a",\n',
                 b'    "b"\n', b"  ]\n", b"}\n"]
        for how in ("by line", "bytewise"):
            with self.subTest(fed=how):
                reader = RequestReader(MAX_BYTES)
                for line in lines[:-1]:
                    chunks = [line] if how == "by line" else [
                        line[i:i + 1] for i in range(len(line))]
                    for chunk in chunks:
                        self.assertIsNone(reader.feed(chunk), "ended early at %r" % line)
                request = reader.feed(lines[-1]) if how == "by line" else None
                if how == "bytewise":
                    self.assertIsNone(reader.feed(b"}"))
                    request = reader.feed(b"\n")
                self.assertIsNotNone(request)
                self.assertEqual((request.cluster, request.name, request.arguments),
                                 ("ops", "uptime", ["a", "b"]))

    def test_request_object_without_newline_waits_for_finish(self):
        reader = RequestReader(MAX_BYTES)
        self.assertIsNone(reader.feed(_body().encode()))
        self.assertIsNone(reader.feed(b"   "))
        self.assertEqual(reader.finish().name, "echo")

    def test_request_exactly_max_bytes_is_accepted(self):
        data = (_body() + "\n").encode()
        for how, chunks in _chunkings(data):
            with self.subTest(fed=how):
                request, _ = read(chunks, max_bytes=len(data))
                self.assertEqual(request.name, "echo")

    def test_repr_never_shows_the_key(self):
        request, _ = read([(_body(arguments=["x"]) + "\n").encode()])
        self.assertNotIn(KEY, repr(request))
        self.assertIn("default::echo", repr(request))

    def test_sixty_kilobyte_request_fed_line_by_line_completes_in_linear_time(self):
        arguments = ["argument number %05d" % i for i in range(2400)]
        data = (json.dumps({"auth_key": KEY, "command": "echo", "arguments": arguments},
                           indent=1) + "\n").encode()
        self.assertGreater(len(data), 60000)
        lines = data.splitlines(True)
        self.assertGreater(len(lines), 2000)
        started = time.monotonic()
        reader = RequestReader(MAX_BYTES)
        for line in lines[:-1]:
            self.assertIsNone(reader.feed(line))
        request = reader.feed(lines[-1])
        elapsed = time.monotonic() - started
        self.assertIsNotNone(request)
        self.assertEqual(request.arguments, arguments)
        # A re-parse at every newline would be quadratic; linear work is well under this.
        self.assertLess(elapsed, 10.0)

    def test_two_megabyte_request_of_many_short_lines_completes_in_linear_time(self):
        # Big enough that re-parsing the buffer at each of its 200,000 newlines (hundreds of
        # gigabytes of parsing) could never finish in time, while linear work takes well
        # under a second.
        arguments = ["%d" % (i % 10) for i in range(200000)]
        data = (json.dumps({"auth_key": KEY, "command": "echo", "arguments": arguments},
                           indent=0) + "\n").encode()
        lines = data.splitlines(True)
        self.assertGreater(len(lines), 200000)
        started = time.monotonic()
        reader = RequestReader(len(data))
        request = None
        for line in lines:
            self.assertIsNone(request)
            request = reader.feed(line)
        self.assertLess(time.monotonic() - started, 10.0)
        self.assertEqual(request.arguments, arguments)

    def test_sixty_kilobyte_request_fed_byte_by_byte_completes(self):
        data = (json.dumps({"auth_key": KEY, "command": "echo",
                            "arguments": ["x" * 50] * 1100}, indent=1) + "\n").encode()
        self.assertGreater(len(data), 60000)
        started = time.monotonic()
        request, index = read([data[i:i + 1] for i in range(len(data))])
        self.assertEqual(index, len(data) - 1)
        self.assertEqual(len(request.arguments), 1100)
        self.assertLess(time.monotonic() - started, 10.0)


class RequestReaderRejectsTest(unittest.TestCase):

    # (name, bytes, code, text the message must contain, where it fails: "newline" = by
    # the first newline fed, "finish" = only at end of input, None = either)
    CASES = [
        # 2001: not UTF-8 JSON, or not a JSON object
        ("not json, at its newline", b"not json\n" + _body().encode(), 2001,
         "invalid JSON", "newline"),
        ("broken object, at its first newline", b'{"a": not json\n"more": 1}\n', 2001,
         "invalid JSON", "newline"),
        ("truncated literal before a newline", b'{"auth_key": tru\ne}\n', 2001,
         "invalid JSON", "newline"),
        ("array at top level", b"[1]\n", 2001, "JSON object", "newline"),
        ("string at top level", b'"s"\n', 2001, "JSON object", "newline"),
        ("number at top level", b"1\n", 2001, "JSON object", "newline"),
        ("number at top level, no newline", b"1", 2001, "JSON object", "finish"),
        ("null at top level", b"null\n", 2001, "JSON object", "newline"),
        ("invalid UTF-8", b'{"auth_key": "\xff\xfe", "command": "echo"}\n', 2001,
         "UTF-8", "newline"),
        ("invalid UTF-8 on an early line", b'{"auth_key": "\xc3\x28",\n', 2001,
         "UTF-8", "newline"),
        ("UTF-16 request", (_body() + "\n").encode("utf-16"), 2001, "", None),
        ("NaN", b'{"auth_key": "k", "command": "echo", "arguments": [NaN]}\n', 2001,
         "NaN", "newline"),
        ("Infinity", b'{"auth_key": Infinity, "command": "echo"}\n', 2001,
         "Infinity", "newline"),
        ("-Infinity", b'{"auth_key": -Infinity, "command": "echo"}\n', 2001,
         "Infinity", "newline"),
        ("empty input", b"", 2001, "empty", "finish"),
        ("whitespace only", b"  \n\r\n\t \n", 2001, "empty", "finish"),
        ("BOM only", b"\xef\xbb\xbf", 2001, "empty", "finish"),
        ("BOM and blank lines only", b"\xef\xbb\xbf\n\n", 2001, "empty", "finish"),
        ("incomplete object at finish", b'{"auth_key": "k",', 2001, "invalid JSON",
         "finish"),
        ("incomplete multi-line object at finish", b'{\n"auth_key": "k",\n', 2001,
         "invalid JSON", "finish"),
        ("unterminated string at finish", b'{"auth_key": "k', 2001, "invalid JSON",
         "finish"),
        ("trailing garbage on the same line", (_body() + " x\n").encode(), 2001,
         "invalid JSON", "newline"),
        ("a second object on the same line", (_body() + _body() + "\n").encode(), 2001,
         "invalid JSON", "newline"),
        ("extra closing brace", (_body() + "}\n").encode(), 2001, "invalid JSON", None),
        ("raw newline inside a string", b'{"auth_key": "k\ney", "command": "echo"}\n',
         2001, "newline inside a string", "newline"),
        ("backslash then raw newline inside a string",
         b'{"auth_key": "k\\\ney", "command": "echo"}\n', 2001, "newline inside a string",
         "newline"),
        ("single quotes", b"{'auth_key': 'k', 'command': 'echo'}\n", 2001, "invalid JSON",
         "newline"),
        # 2002: a field is missing or invalid
        ("unknown field", (_body(user="root") + "\n").encode(), 2002, '"user"', None),
        ("unknown field with a similar name",
         b'{"auth_key": "k", "command": "echo", "argument": ["x"]}\n', 2002,
         '"argument"', None),
        ("duplicate auth_key",
         b'{"auth_key": "k", "command": "echo", "auth_key": "j"}\n', 2002, "auth_key",
         None),
        ("duplicate command",
         b'{"auth_key": "k", "command": "a", "command": "b"}\n', 2002, "command", None),
        ("duplicate arguments",
         b'{"auth_key": "k", "command": "a", "arguments": [], "arguments": ["x"]}\n', 2002,
         "arguments", None),
        ("missing auth_key", b'{"command": "echo"}\n', 2002, "auth_key", None),
        ("empty auth_key", b'{"auth_key": "", "command": "echo"}\n', 2002, "auth_key",
         None),
        ("null auth_key", b'{"auth_key": null, "command": "echo"}\n', 2002, "auth_key",
         None),
        ("numeric auth_key", b'{"auth_key": 1234, "command": "echo"}\n', 2002,
         "auth_key", None),
        ("list auth_key", b'{"auth_key": ["k"], "command": "echo"}\n', 2002, "auth_key",
         None),
        ("auth_key with NUL", b'{"auth_key": "k\\u0000", "command": "echo"}\n', 2002,
         "auth_key", None),
        ("missing command", b'{"auth_key": "k"}\n', 2002, "command", None),
        ("empty object", b"{}\n", 2002, "auth_key", None),
        ("empty command", b'{"auth_key": "k", "command": ""}\n', 2002, "command", None),
        ("numeric command", b'{"auth_key": "k", "command": 1}\n', 2002, "command", None),
        ("object command", b'{"auth_key": "k", "command": {}}\n', 2002, "command", None),
        ("command ::x", (_body(command="::x") + "\n").encode(), 2002, "::x", None),
        ("command x::", (_body(command="x::") + "\n").encode(), 2002, "x::", None),
        ("command ::", (_body(command="::") + "\n").encode(), 2002, "command", None),
        ("command a::b::c", (_body(command="a::b::c") + "\n").encode(), 2002, "a::b::c",
         None),
        ("arguments a string", (_body(arguments="x y") + "\n").encode(), 2002,
         "arguments", None),
        ("arguments an object", (_body(arguments={"a": "b"}) + "\n").encode(), 2002,
         "arguments", None),
        ("arguments an empty object", (_body(arguments={}) + "\n").encode(), 2002,
         "arguments", None),
        ("arguments null", (_body(arguments=None) + "\n").encode(), 2002, "arguments",
         None),
        ("arguments containing a number", (_body(arguments=["a", 1]) + "\n").encode(),
         2002, "arguments[1]", None),
        ("arguments containing null", (_body(arguments=[None]) + "\n").encode(), 2002,
         "arguments[0]", None),
        ("arguments containing a list", (_body(arguments=[["a"]]) + "\n").encode(), 2002,
         "arguments[0]", None),
        ("arguments containing an object", (_body(arguments=[{}]) + "\n").encode(), 2002,
         "arguments[0]", None),
        ("arguments containing a bool", (_body(arguments=[True]) + "\n").encode(), 2002,
         "arguments[0]", None),
        ("argument with NUL", (_body(arguments=["ok", "a\x00b"]) + "\n").encode(), 2002,
         "arguments[1]", None),
        ("argument with a lone surrogate", b'{"auth_key": "k", "command": "echo", '
         b'"arguments": ["\\ud800"]}\n', 2002, "arguments[0]", None),
        ("command with a lone surrogate", b'{"auth_key": "k", "command": "\\udfff"}\n',
         2002, "command", None),
        ("auth_key with a lone surrogate", b'{"auth_key": "\\ud800", "command": "a"}\n',
         2002, "auth_key", None),
    ]

    def test_bad_requests_get_their_code_whole_and_byte_by_byte(self):
        for name, data, code, text, where in self.CASES:
            for how, chunks in _chunkings(data):
                with self.subTest(case=name, fed=how):
                    error, index = read_error(chunks)
                    self.assertEqual(error.code, code, str(error))
                    self.assertIn(text, error.message)
                    self.assertEqual(str(error), "%d: %s" % (code, error.message))
                    if where == "finish":
                        self.assertIsNone(index, "expected to fail only at finish()")
                    elif where == "newline":
                        self.assertIsNotNone(index, "waited for finish()")
                        if how == "bytewise":
                            # It fails by the first newline, not after more input.
                            self.assertLessEqual(index, data.index(b"\n"))

    def test_bad_requests_fail_at_their_newline_with_the_connection_still_open(self):
        # What `echo 'not json' | nc` over a connection that stays open needs: the answer
        # comes at the newline, with more bytes still to come. The last case is one chunk
        # of several lines whose error is on a later line (it used to wait for finish()).
        for data in (b"not json\n", b'{"a": not json\n', b'{"auth_key": "k", "x": y\n',
                     b'{"auth_key": "k",\n"command": "x" "arguments"\n',
                     b'{\n"a": 1,\n"b": nope\n'):
            with self.subTest(data=data):
                reader = RequestReader(MAX_BYTES)
                with self.assertRaises(RelayError) as caught:
                    reader.feed(data)
                self.assertEqual(caught.exception.code, 2001)

    def test_unknown_field_name_is_quoted_in_the_message(self):
        error, _ = read_error([b'{"auth_key": "k", "command": "a", "sudo": true}\n'])
        self.assertEqual((error.code, error.message), (2002, 'unknown field "sudo"'))

    def test_duplicate_field_is_refused_even_with_the_same_value(self):
        error, _ = read_error([b'{"auth_key": "k", "command": "a", "command": "a"}\n'])
        self.assertEqual(error.code, 2002)
        self.assertIn("command", error.message)
        self.assertIn("more than once", error.message)

    def test_bad_field_messages_never_show_the_key(self):
        for data in (b'{"auth_key": "' + KEY.encode() + b'", "command": "::x"}\n',
                     b'{"auth_key": "' + KEY.encode() + b'", "auth_key": "' + KEY.encode()
                     + b'", "command": "x"}\n',
                     b'{"auth_key": "' + KEY.encode() + b'\\u0000", "command": "x"}\n',
                     b'{"auth_key": "' + KEY.encode() + b'", "command": "x", '
                     b'"arguments": 7}\n'):
            with self.subTest(data=data):
                error, _ = read_error([data])
                self.assertEqual(error.code, 2002)
                self.assertNotIn(KEY, error.message)

    def test_too_many_bytes_give_2005(self):
        data = (_body(arguments=["x" * 200]) + "\n").encode()
        for max_bytes in (10, 100, len(data) - 1):
            for how, chunks in _chunkings(data):
                with self.subTest(max_bytes=max_bytes, fed=how):
                    error, index = read_error(chunks, max_bytes=max_bytes)
                    self.assertEqual(error.code, 2005)
                    self.assertIn(str(max_bytes), error.message)
                    # It fails as soon as the limit is passed, not at the end.
                    self.assertIsNotNone(index)
                    self.assertEqual(len(b"".join(chunks[:index])), min(
                        len(data), max_bytes) if how == "bytewise" else 0)

    def test_whitespace_counts_towards_the_limit(self):
        error, index = read_error([b" " * 50, b" " * 51], max_bytes=100)
        self.assertEqual((error.code, index), (2005, 1))


def _nested(depth, opening, middle, closing):
    return (opening * depth + middle + closing * depth).encode("ascii")


class NestingTest(unittest.TestCase):
    """Issue 12: json raises RecursionError, not ValueError, somewhere near 1000 levels,
    which once escaped as 9999 with a traceback. Deeper than MAX_DEPTH is a 2001."""

    TOO_DEEP = "invalid JSON: nested deeper than 32 levels"

    # (name, bytes): every one nests deeper than 32 levels outside strings.
    CASES = [
        ("arrays, 33 levels", _nested(33, "[", "", "]") + b"\n"),
        ("arrays, 1000 levels", _nested(1000, "[", "", "]") + b"\n"),
        ("arrays, 100000 levels", _nested(100000, "[", "", "]") + b"\n"),
        ("objects, 33 levels", _nested(33, '{"a": ', "1", "}") + b"\n"),
        ("objects, 10000 levels", _nested(10000, '{"a": ', "1", "}") + b"\n"),
        ("objects and arrays mixed", _nested(5000, '[{"a": ', "1", "}]") + b"\n"),
        ("in the arguments of a request", (_body()[:-1] + ', "arguments": ').encode()
         + _nested(1000, "[", "", "]") + b"}\n"),
        ("after a string holding brackets and escapes",
         b'{"auth_key": "[[\\"[\\\\", "command": "echo", "arguments": '
         + _nested(40, "[", "", "]") + b"}\n"),
        ("opened only, no newline", _nested(1000, "[", "", "")),
        ("opened only, then a newline", _nested(1000, "[", "", "") + b"\n"),
        ("one level per line", _nested(1000, '[{"a":\n', "", "")),
        ("after a BOM", b"\xef\xbb\xbf" + _nested(1000, "[", "", "]") + b"\n"),
        ("closed too early, then deeper", b"[[]]" + _nested(1000, "[", "", "]") + b"\n"),
    ]

    def test_nesting_deeper_than_32_levels_gets_2001_whole_and_byte_by_byte(self):
        for name, data in self.CASES:
            for how, chunks in _chunkings(data):
                with self.subTest(case=name, fed=how):
                    error, index = read_error(chunks, max_bytes=len(data))
                    self.assertEqual((error.code, error.message), (2001, self.TOO_DEEP))
                    if how == "bytewise":
                        # Refused at the bracket past the limit, before json sees it.
                        self.assertIsNotNone(index)
                        self.assertLess(index, len(data) - 1)

    def test_parse_request_refuses_the_depth_itself(self):
        # The one-line fast path of feed() and finish() call parse_request directly.
        for name, data in self.CASES:
            with self.subTest(case=name):
                with self.assertRaises(RelayError) as caught:
                    protocol.parse_request(data)
                self.assertEqual((caught.exception.code, caught.exception.message),
                                 (2001, self.TOO_DEEP))

    def test_32_levels_are_parsed_as_usual(self):
        arguments = _nested(31, "[", '"x"', "]").decode("ascii")
        data = (_body()[:-1] + ', "arguments": %s}\n' % arguments).encode()
        for how, chunks in _chunkings(data):
            with self.subTest(fed=how):
                error, _ = read_error(chunks)
                self.assertEqual((error.code, error.message),
                                 (2002, "arguments[0] must be a string"))

    def test_brackets_inside_strings_do_not_count(self):
        arguments = ["[" * 1000, "{" * 1000, '\\"[[[[', "\\", "[" * 40, '"', "]" * 40]
        data = (_body(arguments=arguments) + "\n").encode()
        for how, chunks in _chunkings(data):
            with self.subTest(fed=how):
                request, index = read(chunks, max_bytes=len(data))
                self.assertEqual(request.arguments, arguments)
                self.assertEqual(index, len(chunks) - 1)

    def test_recursion_error_is_a_2001_even_past_the_depth_check(self):
        # The last resort: were the check ever bypassed, json's RecursionError is still
        # a 2001, never an exception escaping to the server.
        data = _nested(100000, "[", "", "]")
        original = protocol.MAX_DEPTH
        protocol.MAX_DEPTH = 10 ** 9
        try:
            with self.assertRaises(RelayError) as caught:
                protocol.parse_request(data)
        finally:
            protocol.MAX_DEPTH = original
        self.assertEqual((caught.exception.code, caught.exception.message),
                         (2001, self.TOO_DEEP))


class ParseRequestTest(unittest.TestCase):

    def test_parse_request_returns_a_request(self):
        request = protocol.parse_request(b' {"auth_key": "k", "command": "c::n"} ')
        self.assertEqual((request.auth_key, request.cluster, request.name, request.arguments),
                         ("k", "c", "n", []))

    def test_split_command(self):
        cases = [("x", ("default", "x")), ("c::x", ("c", "x")), ("c:::x", ("c", ":x")),
                 ("default::x", ("default", "x")), ("a b::c d", ("a b", "c d"))]
        for command, expected in cases:
            with self.subTest(command=command):
                self.assertEqual(protocol.split_command(command), expected)
        for command in ("::x", "x::", "::", "a::b::c", "a::::b"):
            with self.subTest(command=command):
                with self.assertRaises(RelayError) as caught:
                    protocol.split_command(command)
                self.assertEqual(caught.exception.code, 2002)


class EncodeReplyTest(unittest.TestCase):

    def test_reply_in_pieces_is_the_same_bytes(self):
        long_text = "line\n\x00\ttab \u00e9\ufffd \U0001f600 \"q\" \\" * 5000
        cases = [
            {"status": "success", "message": "ok", "code": 0},
            {"status": "error", "message": long_text, "code": 3001, "exit_code": 1,
             "stdout": long_text, "stderr": "", "duration_ms": 1.5, "truncated": True},
            {"stdout": "\x00" * (protocol.REPLY_SLICE_CHARS * 2 + 7), "n": None},
        ]
        for reply in cases:
            with self.subTest(keys=sorted(reply)):
                pieces = list(protocol.iter_reply(reply))
                self.assertEqual(b"".join(pieces), protocol.encode_reply(reply))
                if len(protocol.encode_reply(reply)) > 10 * protocol.REPLY_SLICE_CHARS:
                    self.assertGreater(len(pieces), 3)

    def test_reply_is_one_utf8_line_ending_in_newline(self):
        reply = {"status": "success", "code": 0, "message": "line 1\nline 2\r\n\ttab",
                 "stdout": "h\u00e9llo \u2603 \U0001F600\n", "stderr": "\x00\x1b[0m",
                 "exit_code": 0, "duration_ms": 5, "truncated": False}
        data = protocol.encode_reply(reply)
        self.assertIsInstance(data, bytes)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertNotIn(b"\r", data)
        text = data.decode("utf-8")
        self.assertEqual(json.loads(text), reply)
        # Non-ASCII is kept as UTF-8, not escaped as \uXXXX.
        self.assertIn("h\u00e9llo \u2603 \U0001F600", text)
        self.assertIn("h\u00e9llo".encode("utf-8"), data)

    def test_error_reply_shape(self):
        self.assertEqual(protocol.error_reply(2004, "unknown command 'x'"),
                         {"status": "error", "code": 2004, "message": "unknown command 'x'"})
        self.assertEqual(protocol.error_reply(3004),
                         {"status": "error", "code": 3004, "message": "the server is busy"})
        line = protocol.encode_reply(protocol.error_reply(9999))
        self.assertEqual(json.loads(line.decode("utf-8")),
                         {"status": "error", "code": 9999,
                          "message": "internal server error"})
        self.assertEqual(line.count(b"\n"), 1)

    def test_every_code_has_a_message(self):
        self.assertEqual(sorted(protocol.CODES), [0, 1001, 1002, 1003, 2001, 2002, 2003, 2004,
                                                  2005, 2006, 2007, 3001, 3002, 3003, 3004,
                                                  3005, 9999])
        for code in protocol.CODES:
            with self.subTest(code=code):
                error = protocol.RelayError(code)
                self.assertEqual(error.message, protocol.CODES[code])
                self.assertTrue(error.message)


if __name__ == "__main__":
    unittest.main()
