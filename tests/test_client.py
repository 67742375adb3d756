"""End-to-end tests of `uscmdrelay call` against a real server.

The client runs as a real subprocess (the .pyz, and the source tree) so that its exit
status, its stdout and its stderr are exactly what a script or a cron job would see.
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from tests import certs, support
from tests.support import KEY, start_server

CALL_TIMEOUT = 30.0
WRONG_KEY = "wrong-key-0123456789abcdef"

CLIENT_RELAYS = r"""
[default]
echo = /bin/echo
streams = sh -c 'printf "%s" "$1"; printf "%s" "$2" >&2; exit "$3"' streams
unicode = printf '\303\251 \342\234\223\tx\n'
exit3 = sh -c 'echo out; echo err >&2; exit 3'
killself = sh -c 'echo about to die; kill -KILL $$'
termself = sh -c 'echo about to die; kill -TERM $$'
slow = sh -c 'echo started; echo warming >&2; exec sleep 30'
slow.timeout = 1
sleep = sleep
sleep.timeout = 15
"""

# Stopping the server must not wait for a `sleep` left running by a --timeout test.
SERVER_ARGS = ["--shutdown-timeout", "0"]


class CallResult(object):
    """A finished `call`: returncode, stdout and stderr (bytes and text), elapsed s."""

    def __init__(self, returncode, stdout, stderr, elapsed):
        self.returncode = returncode
        self.stdout_bytes = stdout
        self.stderr_bytes = stderr
        self.stdout = stdout.decode("utf-8")
        self.stderr = stderr.decode("utf-8")
        self.elapsed = elapsed

    def __repr__(self):
        return "<call exit %s stdout=%r stderr=%r>" % (self.returncode, self.stdout,
                                                       self.stderr)


def run_call(test, args, key=KEY, program="pyz", env=None, stdin=b"", timeout=CALL_TIMEOUT,
             subcommand="call"):
    """Runs `uscmdrelay call ARGS` with $USCMDRELAY_AUTH_KEY = `key` (unset if None)
    and `env` added to the environment (a None value unsets that variable).

    Fails `test` if it does not finish within `timeout`; returns a CallResult.
    """
    environ = support.environment(program)
    for name in ("USCMDRELAY_AUTH_KEY", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        environ.pop(name, None)
    for name, value in (env or {}).items():  # None unsets
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    if key is not None:
        environ["USCMDRELAY_AUTH_KEY"] = key
    argv = support.command(program) + ([subcommand] if subcommand else []) + list(args)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environ)
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        test.fail("%r did not finish within %g s" % (argv, timeout))
    return CallResult(process.returncode, out, err, time.monotonic() - started)


def can_bind_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        sock.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def closed_port(test):
    """A port nothing listens on: bound (so nobody else takes it), never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def silent_listener(test):
    """A port that accepts connections (in the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock.getsockname()[1]


class _SharedServer(unittest.TestCase):
    """One server (the .pyz) for the whole class, stopped by PID in tearDownClass."""

    PROGRAM = "pyz"

    @classmethod
    def setUpClass(cls):
        support.start_class_server(cls, relays=CLIENT_RELAYS, args=SERVER_ARGS)

    @classmethod
    def tearDownClass(cls):
        support.stop_class_server(cls)

    def call(self, *args, **kwargs):
        port = kwargs.pop("port", self.server.port)
        kwargs.setdefault("program", self.PROGRAM)
        return run_call(self, ["--port", str(port)] + list(args), **kwargs)

    def assertRelayError(self, result, message_pattern, code=None):
        """Exit 255, nothing on stdout, one `uscmdrelay: ...` line on stderr."""
        self.assertEqual(result.returncode, 255, result)
        self.assertEqual(result.stdout, "", result)
        suffix = "" if code is None else r" \(code %d\)" % code
        self.assertRegex(result.stderr, r"\Auscmdrelay: %s%s\n\Z" % (message_pattern, suffix))
        if code is None:
            self.assertNotIn("(code", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


class _CallBehaviour(object):
    """Run with the client from the .pyz and from the source tree."""

    def test_key_from_the_environment_runs_the_command(self):
        result = self.call("echo", "hello", "world")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "hello world\n", ""))

    def test_no_key_is_a_clear_error_with_exit_2(self):
        result = self.call("echo", "hi", key=None)
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr, "uscmdrelay: no auth key: set USCMDRELAY_AUTH_KEY "
                                        "or use --key-file FILE\n")

    def test_key_option_is_refused_not_taken_for_key_file(self):
        # argparse would accept `--key` as an abbreviation of `--key-file`, and then
        # print the secret back as a file name it could not read.
        result = self.call("--key", WRONG_KEY, "echo", "hi")
        self.assertEqual(result.returncode, 2, result)
        self.assertNotIn(WRONG_KEY, result.stderr)
        self.assertNotIn("key file", result.stderr)

    def test_stdout_and_stderr_are_printed_raw(self):
        out = "two\nlines\n\nand a tab:\there\n"
        err = "ünïcödé ✓\tand\n\"quotes\" \\ backslash\n"
        result = self.call("streams", out, err, "0")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout_bytes, out.encode("utf-8"))
        self.assertEqual(result.stderr_bytes, err.encode("utf-8"))

    def test_unicode_output_is_written_as_utf8_in_the_c_locale(self):
        # Scripts often run `LC_ALL=C uscmdrelay call ...`, and cron runs jobs with LANG
        # unset: the output must still come out, byte for byte, as UTF-8.
        env = {"LC_ALL": "C", "LANG": None, "LC_CTYPE": None, "PYTHONIOENCODING": None,
               "PYTHONUTF8": None}
        result = self.call("unicode", env=env)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.stdout_bytes, "é ✓\tx\n".encode("utf-8"))
        self.assertEqual(result.stderr, "")

    def test_exit_status_is_the_remote_exit_code(self):
        result = self.call("exit3")
        # The command's own stderr only: a non-zero exit is not a relay error.
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (3, "out\n", "err\n"))
        result = self.call("streams", "", "", "42")
        self.assertEqual((result.returncode, result.stdout, result.stderr), (42, "", ""))

    def test_death_by_sigkill_exits_137(self):
        result = self.call("killself")
        self.assertEqual((result.returncode, result.stdout), (128 + signal.SIGKILL,
                                                              "about to die\n"), result)
        self.assertNotIn("uscmdrelay:", result.stderr)

    def test_arguments_starting_with_a_dash_reach_the_command(self):
        result = self.call("echo", "-n", "hi")
        self.assertEqual((result.returncode, result.stdout), (0, "hi"), result)
        result = self.call("echo", "x", "--json", "--tls", "--port", "1", "-h")
        self.assertEqual((result.returncode, result.stdout),
                         (0, "x --json --tls --port 1 -h\n"), result)

    def test_double_dash_after_the_command_reaches_the_command(self):
        # `call grep -- -v file` must not lose the `--`: like ssh, everything after
        # COMMAND belongs to the command.
        result = self.call("echo", "--", "a")
        self.assertEqual((result.returncode, result.stdout), (0, "-- a\n"), result)

    def test_bad_key_exits_255_with_code_1001(self):
        result = self.call("echo", "hi", key=WRONG_KEY)
        self.assertRelayError(result, "authentication failed", 1001)
        self.assertNotIn(WRONG_KEY, result.stderr)

    def test_json_prints_the_reply_as_received(self):
        result = self.call("--json", "--no-stream", "streams", "é\n", "warn\n", "0")
        self.assertEqual((result.returncode, result.stderr), (0, ""), result)
        # One line, as the server sent it: the output stays JSON-escaped, and
        # non-ASCII text is not re-encoded as \u escapes.
        self.assertTrue(result.stdout.endswith("\n"), result)
        self.assertEqual(result.stdout.count("\n"), 1, result)
        self.assertIn('"stdout": "é\\n"', result.stdout)
        reply = support.decode_reply(result.stdout_bytes)
        self.assertEqual((reply["code"], reply["stdout"], reply["stderr"], reply["exit_code"]),
                         (0, "é\n", "warn\n", 0))

    def test_list_prints_a_table_and_exits_0(self):
        result = self.call("--list")
        self.assertEqual((result.returncode, result.stderr), (0, ""), result)
        lines = result.stdout.splitlines()
        self.assertRegex(lines[0], r"^COMMAND\s+ARGS\s+DESCRIPTION$")
        names = [line.split()[0] for line in lines[1:]]
        self.assertIn("default::echo", names)
        self.assertIn("default::killself", names)
        self.assertNotIn(KEY, result.stdout)


class _MoreCallBehaviour(object):
    """Run with the client from the .pyz only: the source tree runs the same code."""

    def test_key_file_is_read_and_wins_over_the_environment(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-key-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "key")
        with open(path, "w") as handle:
            handle.write(KEY + "\n")
        result = self.call("--key-file", path, "echo", "from", "file", key=WRONG_KEY)
        self.assertEqual((result.returncode, result.stdout), (0, "from file\n"), result)
        result = self.call("--key-file", path, "echo", "no", "env", key=None)
        self.assertEqual((result.returncode, result.stdout), (0, "no env\n"), result)

    def test_missing_or_empty_key_file_exits_2(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-key-")
        self.addCleanup(shutil.rmtree, directory, True)
        missing = os.path.join(directory, "missing")
        result = self.call("--key-file", missing, "echo", "hi")
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stderr, "uscmdrelay: cannot read key file %s: No such file "
                                        "or directory\n" % missing)
        empty = os.path.join(directory, "empty")
        open(empty, "w").close()
        result = self.call("--key-file", empty, "echo", "hi")
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stderr, "uscmdrelay: key file %s is empty\n" % empty)

    def test_help_offers_no_option_that_takes_the_key_itself(self):
        result = self.call("--help")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("--key-file", result.stdout)
        self.assertIsNone(re.search(r"--key(?![-\w])", result.stdout), result.stdout)

    def test_output_without_final_newline_is_not_changed(self):
        result = self.call("streams", "no newline", "", "0")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "no newline", ""))

    def test_death_by_sigterm_exits_143(self):
        result = self.call("termself")
        self.assertEqual((result.returncode, result.stdout), (128 + signal.SIGTERM,
                                                              "about to die\n"), result)

    def test_unknown_command_exits_255_with_code_2004(self):
        result = self.call("nosuch")
        self.assertRelayError(result, "unknown command 'nosuch' in cluster 'default'", 2004)

    def test_command_timeout_prints_output_so_far_then_code_3003(self):
        result = self.call("slow")
        self.assertEqual(result.returncode, 255, result)
        self.assertEqual(result.stdout, "started\n")
        self.assertRegex(result.stderr, r"\Awarming\nuscmdrelay: command timed out after "
                                        r"1 s and was killed \(code 3003\)\n\Z")

    def test_connection_refused_exits_255_without_a_code(self):
        port = closed_port(self)
        result = self.call("echo", "hi", port=port)
        self.assertRelayError(result, r"cannot connect to 127\.0\.0\.1 port %d: .+" % port)
        self.assertIn("refused", result.stderr.lower())

    def test_tls_to_a_plaintext_server_exits_255(self):
        result = self.call("--tls", "echo", "hi")
        self.assertRelayError(result, r"TLS with 127\.0\.0\.1 port %d failed: .+"
                              % self.server.port)
        # The garbage the handshake sent cost that one connection only.
        self.assertEqual(self.call("echo", "still", "here").stdout, "still here\n")

    def test_json_keeps_the_exit_status_and_prints_no_error_line(self):
        result = self.call("--json", "--no-stream", "exit3")
        self.assertEqual((result.returncode, result.stderr), (3, ""), result)
        self.assertEqual(support.decode_reply(result.stdout_bytes)["code"], 3001)
        result = self.call("--json", "echo", key=WRONG_KEY)
        self.assertEqual((result.returncode, result.stderr), (255, ""), result)
        self.assertEqual(support.decode_reply(result.stdout_bytes),
                         {"status": "error", "code": 1001,
                          "message": "authentication failed"})

    def test_timeout_bounds_the_whole_call(self):
        result = self.call("--timeout", "1", "sleep", "30")
        self.assertRelayError(result, r".+")
        self.assertLess(result.elapsed, 10.0, result)

    def test_host_name_localhost_works(self):
        result = self.call("--host", "localhost", "echo", "by", "name")
        self.assertEqual((result.returncode, result.stdout), (0, "by name\n"), result)

    def test_no_command_is_a_usage_error(self):
        result = self.call()
        self.assertEqual(result.returncode, 2, result)
        self.assertIn("COMMAND", result.stderr)


class CallTests(_CallBehaviour, _MoreCallBehaviour, _SharedServer):
    PROGRAM = "pyz"


class SourceCallTests(_CallBehaviour, _SharedServer):
    PROGRAM = "src"


class CallServerLimitTests(unittest.TestCase):
    """Relay errors that need a server of their own."""

    def test_busy_server_exits_255_with_code_3004(self):
        config_dir = support.make_config_dir(self, relays=CLIENT_RELAYS)
        server = start_server(self, config_dir, args=["--max-connections", "1",
                                                      "--request-timeout", "20"])
        # An idle client holds the only connection (accepted before the call's).
        holder = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        self.addCleanup(holder.close)
        result = run_call(self, ["--port", str(server.port), "echo", "hi"])
        self.assertEqual((result.returncode, result.stdout), (255, ""), result)
        self.assertRegex(result.stderr, r"\Auscmdrelay: server busy: .+ \(code 3004\)\n\Z")

    def test_timeout_bounds_a_server_that_accepts_and_never_answers(self):
        port = silent_listener(self)
        for tls in ([], ["--tls"]):
            with self.subTest(tls=tls):
                result = run_call(self, tls + ["--port", str(port), "--timeout", "1",
                                                "echo", "hi"])
                self.assertEqual((result.returncode, result.stdout), (255, ""), result)
                self.assertRegex(result.stderr, r"\Auscmdrelay: [^\n]+\n\Z")
                self.assertLess(result.elapsed, 10.0, result)

    def test_a_call_that_gives_up_frees_its_place_at_the_server_at_once(self):
        config_dir = support.make_config_dir(self, relays=CLIENT_RELAYS)
        server = start_server(self, config_dir, args=SERVER_ARGS + [
            "--max-connections", "1", "--request-timeout", "20"])
        result = run_call(self, ["--port", str(server.port), "--timeout", "1",
                                 "sleep", "10"])
        self.assertEqual(result.returncode, 255, result)
        self.assertIn("(--timeout)", result.stderr)
        # The sleep still runs, but its client reset the connection: the only place is
        # free again (a plain close would hold it until the sleep ends, 9 s from now).
        deadline = time.monotonic() + 5
        while True:
            reply = support.request(server.port, command="echo", arguments=["next"])
            if reply["code"] != 3004 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual((reply["code"], reply["message"]), (0, "next"), reply)

    def test_ipv6_loopback_host_works(self):
        if not can_bind_ipv6_loopback():
            self.skipTest("cannot bind ::1")
        config_dir = support.make_config_dir(self, relays=CLIENT_RELAYS)
        server = start_server(self, config_dir, args=["--host", "::1"])
        self.assertIn("listening on ::1 port %d" % server.port, server.log_text())
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                result = run_call(self, ["--host", "::1", "--port", str(server.port),
                                         "echo", "over", "v6"], program=program)
                self.assertEqual((result.returncode, result.stdout, result.stderr),
                                 (0, "over v6\n", ""))
        result = run_call(self, ["--host", "::1", "--port", str(server.port), "nosuch"])
        self.assertEqual(result.returncode, 255, result)
        self.assertTrue(result.stderr.endswith("(code 2004)\n"), result)


class RecordingListener(object):
    """A plain TCP listener that records every byte its connections send, and answers
    none of them; `received()` is what arrived so far."""

    def __init__(self, test):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        test.addCleanup(self.sock.close)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(CALL_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self._chunks = []
        self._thread = threading.Thread(target=self._serve, name="recording-listener")
        self._thread.daemon = True
        self._thread.start()
        test.addCleanup(self._thread.join, CALL_TIMEOUT)

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)  # long enough for a request sent in clear to arrive
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._chunks.append(data)

    def received(self):
        self._thread.join(CALL_TIMEOUT)
        return b"".join(self._chunks)


class CallResetTest(unittest.TestCase):
    """A server that resets a plain-text request (what a TLS server of an older version
    does) gets a hint instead of `Connection reset by peer`."""

    def test_a_reset_after_the_request_suggests_tls(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(CALL_TIMEOUT)
        port = listener.getsockname()[1]

        def reset_after_the_request():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(CALL_TIMEOUT)
            try:
                conn.recv(65536)
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        thread = threading.Thread(target=reset_after_the_request)
        thread.daemon = True
        thread.start()
        self.addCleanup(thread.join, CALL_TIMEOUT)
        result = run_call(self, ["--port", str(port), "echo", "hi"])
        self.assertEqual((result.returncode, result.stdout, result.stderr), (
            255, "", "uscmdrelay: 127.0.0.1 port %d reset the connection; if it speaks "
            "TLS: use --tls\n" % port))


class CallTLSOptionsImplyTLSTest(unittest.TestCase):
    """Issue 12: `--tls-ca` and the other TLS options without `--tls` were ignored, and
    the key went out in clear text. Any of them now means TLS."""

    def setUp(self):
        certs.require_openssl(self)
        self.pki = certs.certificates()

    def option_sets(self):
        pki = self.pki
        return [["--tls-ca", pki.ca], ["--tls-server-name", "localhost"],
                ["--tls-cert", pki.client_cert, "--tls-key", pki.client_key],
                ["--tls-key", pki.client_key]]

    def test_any_tls_option_without_tls_connects_with_tls(self):
        pki = self.pki
        config_dir = support.make_config_dir(self, relays=CLIENT_RELAYS)
        server = start_server(self, config_dir, args=[
            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
            "--tls-client-ca", pki.ca, "--shutdown-timeout", "0"])
        for options in (["--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key",
                         pki.client_key],
                        ["--tls-server-name", "localhost", "--tls-cert", pki.client_cert,
                         "--tls-key", pki.client_key],
                        ["--tls-cert", pki.client_cert, "--tls-key", pki.client_key]):
            with self.subTest(options=options):
                # The system's CAs are the test CA here, so options without --tls-ca
                # verify the server too.
                result = run_call(self, ["--port", str(server.port)] + options
                                  + ["echo", "over", "tls"], env={"SSL_CERT_FILE": pki.ca})
                self.assertEqual((result.returncode, result.stdout, result.stderr),
                                 (0, "over tls\n", ""))

    def test_a_tls_option_never_sends_the_key_in_clear_text(self):
        for options in self.option_sets():
            with self.subTest(options=options):
                listener = RecordingListener(self)
                result = run_call(self, ["--port", str(listener.port), "--timeout", "10"]
                                  + options + ["echo", "hi"])
                received = listener.received()
                self.assertEqual((result.returncode, result.stdout), (255, ""), result)
                self.assertNotIn(KEY.encode("ascii"), received)
                self.assertNotIn(b"auth_key", received)
                # A TLS handshake record (type 22) is what arrived instead.
                self.assertTrue(received.startswith(b"\x16\x03"), received[:20])


class CallUsageErrorTest(unittest.TestCase):
    """Issue 12 (13): `--port 70000` and `--timeout nan` printed tracebacks."""

    CASES = [
        ("--port", "70000", "is out of range (1 to 65535)"),
        ("--port", "0", "is out of range (1 to 65535)"),
        ("--port", "-1", "is out of range (1 to 65535)"),
        ("--port", "http", "is not a port number"),
        ("--timeout", "nan", "is out of range (0.001 to 604800)"),
        ("--timeout", "inf", "is out of range (0.001 to 604800)"),
        ("--timeout", "0", "is out of range (0.001 to 604800)"),
        ("--timeout", "-1", "is out of range (0.001 to 604800)"),
        ("--timeout", "604801", "is out of range (0.001 to 604800)"),
        ("--timeout", "soon", "is not a number"),
    ]

    def test_a_bad_port_or_timeout_is_one_line_and_exit_2(self):
        for flag, value, problem in self.CASES:
            for program in ("pyz", "src"):
                with self.subTest(flag=flag, value=value, program=program):
                    result = run_call(self, [flag, value, "echo", "hi"], program=program)
                    self.assertEqual((result.returncode, result.stdout), (2, ""), result)
                    self.assertEqual(result.stderr, "uscmdrelay call: error: argument %s: "
                                     "%r %s\n" % (flag, value, problem))


if __name__ == "__main__":
    unittest.main()
