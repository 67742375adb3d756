"""End-to-end tests with the real clients a sysadmin uses: nc, ncat, socat, jq.

Each test runs a shell pipeline against a real server and is skipped only when one of
its programs is not installed.
"""

import json
import os
import shlex
import shutil
import time
import unittest

from tests import support
from tests.support import KEY, start_server

CLIENT_TIMEOUT = 20.0


def request_text(command="echo", arguments=("via", "client"), auth_key=KEY):
    return json.dumps({"auth_key": auth_key, "command": command,
                       "arguments": list(arguments)})


class _ClientTestCase(unittest.TestCase):
    PROGRAM = "pyz"

    def setUp(self):
        self.server = start_server(self, program=self.PROGRAM)

    def require(self, *programs):
        for program in programs:
            if shutil.which(program) is None:
                self.skipTest("%s is not installed" % program)

    def shell(self, pipeline):
        """Runs `pipeline` with sh -c and $HOST, $PORT set; returns its stdout.

        Fails the test when the pipeline fails or does not finish within CLIENT_TIMEOUT.
        """
        env = dict(os.environ, HOST=self.server.host, PORT=str(self.server.port))
        started = time.monotonic()
        out = support.run_pipeline(self, pipeline, env, CLIENT_TIMEOUT)
        self.elapsed = time.monotonic() - started
        return out

    def assertReply(self, out, message="via client"):
        self.assertTrue(out.endswith("\n") and out.count("\n") == 1, repr(out))
        reply = json.loads(out)
        self.assertEqual(reply["code"], 0, reply)
        self.assertEqual(reply["message"], message)
        self.assertNotIn(KEY, out)
        return reply


class _ClientBehaviour(object):

    def test_echo_into_nc_that_keeps_the_connection_open(self):
        # netcat-openbsd without -N does not half-close when stdin ends: the newline
        # alone must end the request.
        self.require("nc")
        out = self.shell("echo %s | nc $HOST $PORT" % shlex.quote(request_text()))
        self.assertReply(out)
        self.assertLess(self.elapsed, 10.0)

    def test_echo_into_nc_with_half_close(self):
        self.require("nc")
        out = self.shell("echo %s | nc -N $HOST $PORT" % shlex.quote(request_text()))
        self.assertReply(out)

    def test_printf_without_newline_into_nc_half_close(self):
        self.require("nc")
        out = self.shell("printf '%%s' %s | nc -N $HOST $PORT"
                         % shlex.quote(request_text()))
        self.assertReply(out)

    def test_echo_into_ncat(self):
        self.require("ncat")
        out = self.shell("echo %s | ncat $HOST $PORT" % shlex.quote(request_text()))
        self.assertReply(out)

    def test_echo_into_socat(self):
        self.require("socat")
        out = self.shell("echo %s | socat - TCP:$HOST:$PORT"
                         % shlex.quote(request_text()))
        self.assertReply(out)

    def test_reply_piped_into_jq_gives_the_message(self):
        self.require("nc", "jq")
        text = request_text(arguments=["hello", "from", "jq"])
        out = self.shell("echo %s | nc $HOST $PORT | jq -r .message" % shlex.quote(text))
        self.assertEqual(out, "hello from jq\n")

    def test_error_reply_reaches_nc(self):
        self.require("nc", "jq")
        text = request_text(auth_key="not-a-key")
        out = self.shell("echo %s | nc $HOST $PORT | jq -r .code" % shlex.quote(text))
        self.assertEqual(out, "1001\n")

    def test_pretty_printed_request_from_a_here_document_into_nc(self):
        self.require("nc")
        text = json.dumps({"auth_key": KEY, "command": "echo",
                           "arguments": ["via", "client"]}, indent=2)
        out = self.shell("nc $HOST $PORT <<'EOF'\n%s\nEOF" % text)
        self.assertReply(out)


class ClientTests(_ClientBehaviour, _ClientTestCase):
    PROGRAM = "pyz"


class SourceClientTests(_ClientBehaviour, _ClientTestCase):
    PROGRAM = "src"


if __name__ == "__main__":
    unittest.main()
