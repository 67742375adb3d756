"""End-to-end tests of the real server process over raw sockets on 127.0.0.1.

Every reply code a client can cause is triggered over the wire (9999 needs a fault
injected into the server, so test_faults covers it). Each behaviour runs against the
built dist/uscmdrelay.pyz; the `Source*` classes repeat a representative part against
the source tree.
"""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

from tests import support
from tests.support import KEY, OTHER_KEY, exchange, make_config_dir, start_server

ALL_KEY = "all-key-0123456789abcdef"
WRONG_KEY = "wrong-key-fedcba9876543210"

AUTH = support.DEFAULT_AUTH + """
[{all}]
description = all clusters
auth_clusters = *
""".format(all=ALL_KEY)

# {dir} is the config dir; commands that start a background child write its PID there.
RELAYS = """\
[default]
true = /bin/true
echo = /bin/echo
printf = printf '%s|'
pipe = echo hi | tr a-z A-Z
fail = sh -c "echo out; echo oops >&2; echo >&2; exit 3"
failout = sh -c "printf 'only stdout\\n\\n'; exit 4"
missing = /nonexistent/program
sleep = /bin/sleep
big = seq 1 100000
bigerr = sh -c "seq 1 100000 >&2"
bg = sh -c "sleep 30 & echo $! > {dir}/bg.pid; echo done"
slow = sh -c "sleep 30 & echo $! > {dir}/slow.pid; echo started; sleep 30"

[ops]
uptime = uptime

[unused]
true = /bin/true
"""

RAN_FIELDS = {"status", "message", "code", "exit_code", "stdout", "stderr", "duration_ms",
              "truncated"}
NOT_RAN_FIELDS = {"status", "message", "code"}

# Arguments that a shell would interpret; they must reach argv as they are.
LITERAL_ARGUMENTS = [";", "$(id)", "`id`", "'single'", '"double"', "a b  c", "*", "\\",
                     "&& echo INJECTED", "|", "$HOME", "\u00fcn\u00efc\u00f6de", ""]

AUDIT_LINE = re.compile(r'client=127\.0\.0\.1:\d+ key=("[^"]*"|-) command=(\S+) '
                        r"arguments=(.*?) code=(\d+) exit=(\S+) duration_ms=(\S+)$", re.M)


def body(auth_key=KEY, command="true", arguments=None, newline=True):
    """The bytes of one request object."""
    fields = {"auth_key": auth_key, "command": command}
    if arguments is not None:
        fields["arguments"] = arguments
    return (json.dumps(fields) + ("\n" if newline else "")).encode("utf-8")


def relay_config(test, relays=RELAYS, auth=AUTH):
    """A config dir for `test` with this module's keys and commands."""
    directory = make_config_dir(test, auth=auth, relays=None)
    return support.write_config(directory, auth=None, relays=relays.format(dir=directory))


def kill_pid_in(path):
    """Kills the process whose PID a test command wrote to `path`, if any."""
    try:
        with open(path) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def alive(pid):
    """True while `pid` is a running (not zombie) process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        if os.path.isdir("/proc/self"):
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state not in ("Z", "X")


stop_process = support.stop_process


def run_to_exit(test, args, program="pyz", timeout=20.0):
    """Runs uscmdrelay expecting it to exit; returns (status, stdout, stderr)."""
    process = subprocess.Popen(support.command(program) + list(args),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True,
                               env=support.environment(program))
    test.addCleanup(stop_process, process)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        test.fail("uscmdrelay %s did not exit within %g s" % (" ".join(args), timeout))
    return process.returncode, out, err


class _ServerTestCase(unittest.TestCase):
    PROGRAM = "pyz"

    def start(self, *args, **kwargs):
        """Starts a server with this module's config (or `config_dir`)."""
        config_dir = kwargs.pop("config_dir", None) or relay_config(self)
        self.config_dir = config_dir
        self.server = start_server(self, config_dir, args=args, program=self.PROGRAM)
        return self.server

    def raw(self, payload, **kwargs):
        """Sends raw bytes; checks the reply is one line, then the close; returns it."""
        data = exchange(self.server.port, payload, **kwargs)
        for secret in (KEY, OTHER_KEY, ALL_KEY, WRONG_KEY):
            self.assertNotIn(secret.encode("utf-8"), data)
        text = data.decode("utf-8")
        self.assertTrue(text.endswith("\n"), "reply does not end in a newline: %r" % text)
        self.assertEqual(text.count("\n"), 1, "reply is not one line: %r" % text)
        reply = json.loads(text)
        self.assertIsInstance(reply, dict)
        return reply

    def call(self, command="true", arguments=None, auth_key=KEY, **kwargs):
        return self.raw(body(auth_key, command, arguments), **kwargs)

    def assertRan(self, reply, code, exit_code=None):
        self.assertEqual(set(reply), RAN_FIELDS, reply)
        self.assertEqual(reply["code"], code, reply)
        self.assertEqual(reply["status"], "success" if code == 0 else "error")
        if exit_code is not None:
            self.assertEqual(reply["exit_code"], exit_code, reply)
        self.assertIsInstance(reply["duration_ms"], (int, float))
        self.assertIsInstance(reply["truncated"], bool)

    def assertNotRan(self, reply, code):
        self.assertEqual(reply, {"status": "error", "code": code,
                                 "message": reply.get("message")}, reply)
        self.assertIsInstance(reply["message"], str)
        self.assertTrue(reply["message"])


class _WireBehaviour(object):
    """Run against both the .pyz and the source tree."""

    # -- every code --------------------------------------------------------------------

    def test_success_replies_code_0_with_every_field(self):
        self.start()
        reply = self.call("echo", ["hello", "world"])
        self.assertRan(reply, 0, exit_code=0)
        self.assertEqual(reply["message"], "hello world")
        self.assertEqual(reply["stdout"], "hello world\n")
        self.assertEqual(reply["stderr"], "")
        self.assertIs(reply["truncated"], False)

    def test_cluster_prefixed_command_runs(self):
        self.start()
        self.assertRan(self.call("default::true"), 0, exit_code=0)
        self.assertRan(self.call("ops::uptime", auth_key=OTHER_KEY), 0, exit_code=0)

    def test_unknown_key_gets_1001(self):
        self.start()
        self.assertNotRan(self.call("true", auth_key=WRONG_KEY), 1001)
        # The key is case-sensitive.
        self.assertNotRan(self.call("true", auth_key=KEY.upper()), 1001)

    def test_key_not_granted_the_cluster_gets_1002_whether_or_not_it_exists(self):
        self.start()
        self.assertNotRan(self.call("true", auth_key=OTHER_KEY), 1002)
        self.assertNotRan(self.call("unused::true"), 1002)
        self.assertNotRan(self.call("ghost::true"), 1002)
        self.assertNotRan(self.call("ghost::true", auth_key=WRONG_KEY), 1001)

    def test_bad_json_gets_2001(self):
        self.start()
        for payload in (b"not json\n", b"[1, 2]\n", b'"a string"\n', b"\xff\xfe{}\n",
                        b'{"auth_key": "x",}\n', b"\n\n", b"", b"{\"a\": NaN}\n"):
            with self.subTest(payload=payload):
                self.assertNotRan(self.raw(payload), 2001)

    def test_invalid_fields_get_2002_naming_the_field(self):
        self.start()
        cases = [
            ({"command": "true"}, "auth_key"),
            ({"auth_key": KEY}, "command"),
            ({"auth_key": KEY, "command": ""}, "command"),
            ({"auth_key": KEY, "command": "true", "arguments": "x"}, "arguments"),
            ({"auth_key": KEY, "command": "true", "arguments": [1]}, "arguments"),
            ({"auth_key": KEY, "command": "true", "arguments": ["a\u0000b"]}, "arguments"),
            ({"auth_key": KEY, "command": "true", "extra": 1}, "extra"),
            ({"auth_key": 5, "command": "true"}, "auth_key"),
        ]
        for fields, name in cases:
            with self.subTest(fields=fields):
                reply = self.raw((json.dumps(fields) + "\n").encode("utf-8"))
                self.assertNotRan(reply, 2002)
                self.assertIn(name, reply["message"])
        twice = ('{"auth_key": "%s", "command": "fail", "command": "true"}\n' % KEY).encode()
        reply = self.raw(twice)
        self.assertNotRan(reply, 2002)
        self.assertIn("command", reply["message"])

    def test_unknown_cluster_gets_2003(self):
        self.start()
        self.assertNotRan(self.call("ghost::true", auth_key=ALL_KEY), 2003)

    def test_unknown_command_gets_2004(self):
        self.start()
        self.assertNotRan(self.call("nosuch"), 2004)
        self.assertNotRan(self.call("ops::true"), 2004)

    def test_request_larger_than_max_request_gets_2005(self):
        self.start("--max-request", "300")
        self.assertRan(self.call("echo", ["x" * 100]), 0)
        self.assertNotRan(self.call("echo", ["x" * 1000]), 2005)
        # A client still sending a large body gets the reply too.
        self.assertNotRan(self.call("echo", ["x" * 300000]), 2005)

    def test_silent_client_gets_2006_after_request_timeout(self):
        self.start("--request-timeout", "1")
        started = time.monotonic()
        reply = self.raw(b"", half_close=False, timeout=15)
        elapsed = time.monotonic() - started
        self.assertNotRan(reply, 2006)
        self.assertGreater(elapsed, 0.5)
        self.assertLess(elapsed, 8.0)

    def test_client_stalling_mid_request_gets_2006(self):
        self.start("--request-timeout", "1")
        started = time.monotonic()
        reply = self.raw(body()[:20], half_close=False, timeout=15)
        elapsed = time.monotonic() - started
        self.assertNotRan(reply, 2006)
        self.assertGreater(elapsed, 0.5)
        self.assertLess(elapsed, 8.0)
        # A pretty-printed request cut off after a newline waits too, then times out.
        reply = self.raw(b'{\n  "auth_key": "x",\n', half_close=False, timeout=15)
        self.assertNotRan(reply, 2006)

    def test_failing_command_gets_3001_with_stderr_as_message(self):
        self.start()
        reply = self.call("fail")
        self.assertRan(reply, 3001, exit_code=3)
        self.assertEqual(reply["message"], "oops")
        self.assertEqual(reply["stdout"], "out\n")
        self.assertEqual(reply["stderr"], "oops\n\n")

    def test_failing_command_without_stderr_gets_stdout_as_message(self):
        self.start()
        reply = self.call("failout")
        self.assertRan(reply, 3001, exit_code=4)
        self.assertEqual(reply["message"], "only stdout")
        self.assertEqual(reply["stdout"], "only stdout\n\n")
        self.assertEqual(reply["stderr"], "")

    def test_missing_program_gets_3002_without_run_fields(self):
        self.start()
        reply = self.call("missing")
        self.assertNotRan(reply, 3002)
        self.assertIn("/nonexistent/program", reply["message"])

    def test_timeout_gets_3003_with_output_so_far_and_kills_the_grandchild(self):
        self.start("--timeout", "1")
        self.addCleanup(kill_pid_in, os.path.join(self.config_dir, "slow.pid"))
        started = time.monotonic()
        reply = self.call("slow")
        self.assertLess(time.monotonic() - started, 10.0)
        self.assertRan(reply, 3003)
        self.assertLess(reply["exit_code"], 0)
        self.assertEqual(reply["stdout"], "started\n")
        self.assertIn("timed out", reply["message"])
        with open(os.path.join(self.config_dir, "slow.pid")) as handle:
            grandchild = int(handle.read())
        deadline = time.monotonic() + 5.0
        while alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(alive(grandchild), "the timed-out command's child still runs")

    def test_connections_beyond_max_connections_get_3004_at_once(self):
        self.start("--max-connections", "2", "--request-timeout", "30")
        idle = []
        for _ in range(2):
            sock = socket.create_connection((self.server.host, self.server.port), timeout=10)
            self.addCleanup(sock.close)
            idle.append(sock)
        idle[1].sendall(b'{"auth_key": ')
        started = time.monotonic()
        reply = self.raw(b"", half_close=False, timeout=15)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertNotRan(reply, 3004)
        # Once the idle clients go, their places are free again.
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 5.0
        while True:
            reply = self.call("true")
            if reply["code"] != 3004 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertRan(reply, 0)

    # -- framing -----------------------------------------------------------------------

    def test_not_json_gets_2001_at_the_newline_not_after_the_timeout(self):
        self.start("--request-timeout", "30")
        for payload in (b"not json\n", b'{"auth_key": nope\n', b'{"auth_key":\n"a\n'):
            with self.subTest(payload=payload):
                started = time.monotonic()
                reply = self.raw(payload, half_close=False, timeout=15)
                self.assertLess(time.monotonic() - started, 5.0)
                self.assertNotRan(reply, 2001)

    def test_request_without_newline_ends_at_half_close(self):
        self.start()
        reply = self.raw(body(command="echo", arguments=["half"], newline=False))
        self.assertRan(reply, 0)
        self.assertEqual(reply["message"], "half")

    def test_request_ending_at_newline_is_answered_while_client_keeps_sending_side_open(self):
        self.start("--request-timeout", "30")
        started = time.monotonic()
        reply = self.raw(body(command="echo", arguments=["open"]), half_close=False,
                         timeout=15)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertRan(reply, 0)
        self.assertEqual(reply["message"], "open")

    def test_pretty_printed_multi_line_request_works(self):
        self.start("--request-timeout", "30")
        pretty = json.dumps({"auth_key": KEY, "command": "echo",
                             "arguments": ["multi", "line"]}, indent=2)
        self.assertGreater(pretty.count("\n"), 3)
        for half_close in (False, True):
            with self.subTest(half_close=half_close):
                started = time.monotonic()
                reply = self.raw((pretty + "\n").encode(), half_close=half_close, timeout=15)
                self.assertLess(time.monotonic() - started, 5.0)
                self.assertRan(reply, 0)
                self.assertEqual(reply["message"], "multi line")

    def test_bom_and_surrounding_whitespace_are_ignored(self):
        self.start()
        reply = self.raw(b"\xef\xbb\xbf \r\n" + body(command="echo", arguments=["bom"]))
        self.assertRan(reply, 0)
        self.assertEqual(reply["message"], "bom")

    # -- execution ---------------------------------------------------------------------

    def test_arguments_reach_argv_literally_without_shell_exec(self):
        self.start()
        reply = self.call("printf", LITERAL_ARGUMENTS)
        self.assertRan(reply, 0)
        self.assertEqual(reply["stdout"], "".join(a + "|" for a in LITERAL_ARGUMENTS))
        # Without a shell the configured line's `|` is just another argument.
        self.assertEqual(self.call("pipe")["stdout"], "hi | tr a-z A-Z\n")

    def test_arguments_reach_argv_literally_with_shell_exec(self):
        self.start("--shell-exec")
        reply = self.call("printf", LITERAL_ARGUMENTS)
        self.assertRan(reply, 0)
        self.assertEqual(reply["stdout"], "".join(a + "|" for a in LITERAL_ARGUMENTS))
        self.assertNotIn("INJECTED\n", reply["stdout"])
        # The configured line itself is shell syntax.
        self.assertEqual(self.call("pipe")["stdout"], "HI\n")

    def test_output_beyond_max_output_is_dropped_and_flagged(self):
        self.start("--max-output", "1000")
        expected = "".join("%d\n" % i for i in range(1, 100001))[:1000]
        reply = self.call("big")
        self.assertRan(reply, 0, exit_code=0)
        self.assertIs(reply["truncated"], True)
        self.assertEqual(reply["stdout"], expected)
        reply = self.call("bigerr")
        self.assertRan(reply, 0, exit_code=0)
        self.assertIs(reply["truncated"], True)
        self.assertEqual(reply["stderr"], expected)
        self.assertIs(self.call("echo", ["short"])["truncated"], False)

    def test_background_child_holding_stdout_does_not_delay_the_reply(self):
        self.start()
        self.addCleanup(kill_pid_in, os.path.join(self.config_dir, "bg.pid"))
        started = time.monotonic()
        reply = self.call("bg", timeout=25)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertRan(reply, 0, exit_code=0)
        self.assertEqual(reply["message"], "done")

    # -- logging and signals ------------------------------------------------------------

    def test_auth_key_never_appears_in_log_or_reply(self):
        self.start("--log-level", "DEBUG")
        self.assertRan(self.call("echo", ["first"]), 0)                   # good key
        self.assertNotRan(self.call("echo", auth_key=WRONG_KEY), 1001)    # wrong key
        self.assertNotRan(self.call("true", auth_key=OTHER_KEY), 1002)
        self.assertNotRan(self.call("ghost::true", auth_key=ALL_KEY), 2003)
        self.assertNotRan(self.raw(                                       # bad request
            ('{"auth_key": "%s", "command": "true", "x": 1}\n' % KEY).encode()), 2002)
        self.assertNotRan(self.raw(('{"auth_key": "%s", oops\n' % KEY).encode()), 2001)
        self.assertNotRan(self.raw(('{"auth_key": "%s", "command": "x"' % WRONG_KEY)
                                   .encode()), 2001)
        self.server.stop()
        log_text = self.server.log_text()
        for secret in (KEY, OTHER_KEY, WRONG_KEY):
            self.assertNotIn(secret, log_text)
        audits = AUDIT_LINE.findall(log_text)
        self.assertEqual(len(audits), 7, log_text)
        self.assertEqual(audits[0][:5], ('"test client"', '"default::echo"', '["first"]',
                                         "0", "0"))
        self.assertEqual(audits[1][:5], ("-", '"default::echo"', "[]", "1001", "-"))
        # A known key that is refused is still named by its description.
        self.assertEqual(audits[2][:4], ('"other client"', '"default::true"', "[]", "1002"))
        self.assertEqual(audits[3][:4], ('"all clusters"', '"ghost::true"', "[]", "2003"))
        self.assertEqual([audit[3] for audit in audits],
                         ["0", "1001", "1002", "2003", "2002", "2001", "2001"])

    def test_sigterm_and_sigint_make_the_server_exit_0(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=signum):
                server = self.start()
                self.assertRan(self.call("true"), 0)
                self.assertEqual(server.stop(signum), 0)
                self.assertNotIn("Traceback", server.log_text())

    def test_bad_config_exits_2_with_one_line_and_no_traceback(self):
        config_dir = relay_config(self, relays=support.QUIET_RELAYS)
        os.chmod(os.path.join(config_dir, "auth.conf"), 0o644)
        status, out, err = run_to_exit(self, ["--config-dir", config_dir, "--host",
                                              "127.0.0.1", "--port", "0"], self.PROGRAM)
        self.assertEqual(status, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("Config error: %s"
                                       % os.path.join(config_dir, "auth.conf")), err)
        self.assertIn("644", err)
        self.assertIn("chmod 600", err)

    def test_port_in_use_exits_1_with_one_line_and_no_traceback(self):
        config_dir = relay_config(self, relays=support.QUIET_RELAYS)
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        status, out, err = run_to_exit(self, ["--config-dir", config_dir, "--host",
                                              "127.0.0.1", "--port", str(port)],
                                       self.PROGRAM)
        self.assertEqual(status, 1, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(str(port), err)


class WireTests(_WireBehaviour, _ServerTestCase):
    PROGRAM = "pyz"


class SourceWireTests(_WireBehaviour, _ServerTestCase):
    PROGRAM = "src"


class ConcurrencyTests(_ServerTestCase):
    """Slower behaviours, run against the .pyz only."""

    def test_slow_command_does_not_delay_another_client(self):
        self.start()
        result = {}

        def slow():
            try:
                result["reply"] = self.call("sleep", ["5"], timeout=25)
            except Exception as error:  # reported by the main thread
                result["error"] = error

        thread = threading.Thread(target=slow)
        thread.start()
        self.addCleanup(thread.join, 30)
        time.sleep(0.5)
        started = time.monotonic()
        reply = self.call("true", timeout=15)
        self.assertLess(time.monotonic() - started, 2.5)
        self.assertRan(reply, 0)
        self.assertTrue(thread.is_alive(), "the slow request should still be running")
        thread.join(25)
        self.assertNotIn("error", result)
        self.assertRan(result["reply"], 0, exit_code=0)
        self.assertGreater(result["reply"]["duration_ms"], 4500)

    def test_500_idle_connections_do_not_stop_a_new_client(self):
        self.start("--max-connections", "600", "--max-connections-per-host", "0",
                   "--request-timeout", "30")
        idle = []
        try:
            for index in range(500):
                sock = socket.create_connection((self.server.host, self.server.port),
                                                timeout=10)
                idle.append(sock)
                if index % 2:
                    sock.sendall(b'{"auth_key": "')
            started = time.monotonic()
            reply = self.call("echo", ["served"], timeout=15)
            self.assertLess(time.monotonic() - started, 5.0)
            self.assertRan(reply, 0)
            self.assertEqual(reply["message"], "served")
        finally:
            for sock in idle:
                sock.close()


# A reply far larger than the kernel's socket buffers: the command prints this many bytes,
# and the reply carries them twice (as "stdout" and as "message"), so ~12 MB of JSON.
BIG_OUTPUT_BYTES = 6000000
BIG_LINE = "0123456789abcdefghijklmnopqrstuvwxyz"
BIG_RELAYS = """\
[default]
echo = /bin/echo
big = sh -c "yes %s | head -c %d"

[ops]
echo = /bin/echo
""" % (BIG_LINE, BIG_OUTPUT_BYTES)
BIG_SERVER_ARGS = ("--max-output", str(2 * BIG_OUTPUT_BYTES))
# What a reader takes per recv() and how long it naps after each: slow, yet ~12 MB
# still arrive within a few seconds.
SLOW_RECV_BYTES = 4096
SLOW_NAP_SECONDS = 0.001
# A small receive buffer caps the TCP window, so the server's writes keep blocking.
SMALL_RCVBUF_BYTES = 4096
PAUSE_AFTER_BYTES = 1000000
READ_LIMIT_SECONDS = 60.0


def big_output():
    """The exact stdout of the `big` command."""
    lines = BIG_OUTPUT_BYTES // (len(BIG_LINE) + 1) + 1
    return ((BIG_LINE + "\n") * lines)[:BIG_OUTPUT_BYTES]


def small_buffer_connection(port, timeout=30.0):
    """A client socket whose receive buffer is shrunk before it connects (the TCP window
    is agreed on at connect time)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF_BYTES)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except Exception:
        sock.close()
        raise
    return sock


def kernel_send_buffer_max():
    """The most the kernel lets a TCP send buffer grow to, or None if unknown."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as handle:
            return int(handle.read().split()[2])
    except (OSError, ValueError, IndexError):
        return None


class SlowReader(object):
    """Reads a reply in a thread, SLOW_RECV_BYTES at a time with a nap after each, until
    the peer ends the stream. After `pause_after` bytes it stops reading (`paused` is
    set) until `resume()`. `data` is what arrived, `error` what ended the reading, if
    anything but the end of the stream."""

    def __init__(self, sock, pause_after=None):
        self.sock = sock
        self.pause_after = pause_after
        self.paused = threading.Event()
        self.done = threading.Event()
        self._resumed = threading.Event()
        self._chunks = []
        self.received = 0
        self.error = None
        self._thread = threading.Thread(target=self._run)
        self._thread.daemon = True

    def start(self):
        self._thread.start()
        return self

    def resume(self):
        self._resumed.set()

    def wait_for_pause(self, timeout=READ_LIMIT_SECONDS):
        """True once the reader pauses; False if the stream ends first or in time."""
        deadline = time.monotonic() + timeout
        while not self.paused.is_set() and not self.done.is_set():
            if time.monotonic() > deadline:
                break
            self.paused.wait(0.05)
        return self.paused.is_set()

    def stop(self):
        """For cleanups: un-pauses and waits a little for the thread."""
        self._resumed.set()
        self._thread.join(READ_LIMIT_SECONDS)

    def join(self, timeout=READ_LIMIT_SECONDS):
        self._thread.join(timeout)
        return self.done.is_set()

    @property
    def data(self):
        return b"".join(self._chunks)

    def _run(self):
        deadline = time.monotonic() + READ_LIMIT_SECONDS
        try:
            while time.monotonic() < deadline:
                if (self.pause_after is not None and self.received >= self.pause_after
                        and not self._resumed.is_set()):
                    self.paused.set()
                    self._resumed.wait(READ_LIMIT_SECONDS)
                data = self.sock.recv(SLOW_RECV_BYTES)
                if not data:
                    return
                self._chunks.append(data)
                self.received += len(data)
                time.sleep(SLOW_NAP_SECONDS)
            self.error = AssertionError("still reading after %g s" % READ_LIMIT_SECONDS)
        except Exception as error:  # reported by the test's thread
            self.error = error
        finally:
            self.done.set()


def check_big_reply(test, data):
    """Fails `test` unless `data` is the whole reply of the `big` command. Compares
    without assertEqual's diff, which would take minutes on megabytes."""
    test.assertGreater(len(data), 2 * BIG_OUTPUT_BYTES)
    test.assertTrue(data.endswith(b"}\n"), "the reply is cut off: ...%r" % data[-80:])
    test.assertEqual(data.count(b"\n"), 1, "the reply is not one line")
    reply = json.loads(data.decode("utf-8"))
    test.assertEqual((reply["code"], reply["exit_code"], reply["truncated"],
                      reply["stderr"]), (0, 0, False, ""))
    expected = big_output()
    for field, value in (("stdout", expected), ("message", expected.rstrip("\r\n"))):
        test.assertEqual(len(reply[field]), len(value), field)
        test.assertTrue(reply[field] == value, "%s differs from the command's output"
                        % field)


class SlowReaderTests(_ServerTestCase):
    """Replies larger than the socket buffers, written as slow clients take them."""

    def start_big(self, *args):
        return self.start(*(BIG_SERVER_ARGS + args),
                          config_dir=relay_config(self, relays=BIG_RELAYS))

    def send_big_request(self):
        sock = small_buffer_connection(self.server.port)
        self.addCleanup(sock.close)
        sock.sendall(body(command="big"))
        return sock

    def start_paused_reader(self):
        """Asks for the big reply and reads it slowly up to PAUSE_AFTER_BYTES, where the
        reader stops with the rest of the reply still to be written; returns it."""
        reader = SlowReader(self.send_big_request(), PAUSE_AFTER_BYTES).start()
        self.addCleanup(reader.stop)
        self.assertTrue(reader.wait_for_pause(), "the reply ended after %d bytes (%r)"
                        % (reader.received, reader.error))
        return reader

    def finish_reading(self, reader):
        reader.resume()
        self.assertTrue(reader.join(), "the slow reader did not finish")
        self.assertIsNone(reader.error, "after %d bytes" % reader.received)
        check_big_reply(self, reader.data)

    def test_big_reply_reaches_a_slow_reader_intact_while_others_are_served(self):
        self.start_big("--request-timeout", "60")
        reader = self.start_paused_reader()
        # The server's write to the slow reader is blocked now; the loop is not.
        started = time.monotonic()
        reply = self.call("echo", ["meanwhile"], timeout=15)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertRan(reply, 0)
        self.assertEqual(reply["message"], "meanwhile")
        self.assertFalse(reader.done.is_set(), "the slow reader should still be reading")
        self.finish_reading(reader)

    def test_reply_not_read_within_request_timeout_is_dropped_and_frees_its_place(self):
        reply_bytes = 2 * BIG_OUTPUT_BYTES
        limit = kernel_send_buffer_max()
        if limit is not None and limit + SMALL_RCVBUF_BYTES * 4 >= reply_bytes:
            self.skipTest("the kernel may buffer the whole reply (tcp_wmem max %d)" % limit)
        self.start_big("--request-timeout", "1", "--max-connections", "1")
        sock = self.send_big_request()
        # The first byte has arrived, so the reply is being written; peeking leaves it
        # unread, and the client never reads it.
        self.assertEqual(len(sock.recv(1, socket.MSG_PEEK)), 1)
        started = time.monotonic()
        # The reply still being written counts against --max-connections ...
        self.assertNotRan(self.raw(b"", half_close=False, timeout=15), 3004)
        # ... until --request-timeout drops it; then its place is free again.
        deadline = started + 10.0
        while True:
            reply = self.call("echo", ["after"], timeout=15)
            if reply["code"] != 3004 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertRan(reply, 0)
        self.assertEqual(reply["message"], "after")
        self.assertLess(time.monotonic() - started, 10.0)
        # The dropped client gets what the kernels held, then the end: not the reply.
        data = support.read_until_gone(sock, 30.0)
        self.assertLess(len(data), reply_bytes)
        self.assertFalse(data.endswith(b"\n"), "the whole reply arrived")

    def test_sigterm_lets_a_slow_reader_finish_its_reply_then_exits_0(self):
        server = self.start_big("--request-timeout", "60", "--shutdown-timeout", "30")
        reader = self.start_paused_reader()
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while ("stopping:" not in server.log_text() and server.process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.assertIn("stopping: no new connections; 1 requests in flight",
                      server.log_text())
        self.assertIsNone(server.process.poll(), "the server left a reply unwritten")
        self.finish_reading(reader)
        try:
            status = server.process.wait(20)
        except subprocess.TimeoutExpired:
            self.fail("the server did not exit once the reply was written")
        self.assertEqual(status, 0, server.log_text())
        self.assertNotIn("Traceback", server.log_text())


class LogFileTests(_ServerTestCase):

    def start_logging_to(self, log_file):
        """Starts a server with --log `log_file`; returns (process, port, stderr path)."""
        config_dir = relay_config(self)
        stderr_path = os.path.join(config_dir, "stderr.txt")
        stderr = open(stderr_path, "wb")
        self.addCleanup(stderr.close)
        argv = support.command(self.PROGRAM) + [
            "--config-dir", config_dir, "--host", "127.0.0.1", "--port", "0",
            "--log", log_file]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr,
                                   stderr=stderr, env=support.environment(self.PROGRAM))
        self.addCleanup(stop_process, process)
        deadline = time.monotonic() + support.START_TIMEOUT
        while time.monotonic() < deadline:
            match = support.LISTENING.search(read_text(log_file))
            if match:
                return process, int(match.group(2)), stderr_path
            self.assertIsNone(process.poll(), read_text(stderr_path))
            time.sleep(0.02)
        self.fail("server did not start: %s" % read_text(stderr_path))

    def test_log_file_gets_the_logs_and_is_reopened_after_logrotate_moves_it(self):
        directory = make_config_dir(self, auth=None, relays=None)
        log_file = os.path.join(directory, "relay.log")
        process, port, stderr_path = self.start_logging_to(log_file)
        self.assertEqual(support.request(port, command="echo",
                                         arguments=["before-rotate"])["code"], 0)
        self.assertIn("before-rotate", read_text(log_file))
        os.rename(log_file, log_file + ".1")
        self.assertEqual(support.request(port, command="echo",
                                         arguments=["after-rotate"])["code"], 0)
        deadline = time.monotonic() + 5.0
        while "after-rotate" not in read_text(log_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("after-rotate", read_text(log_file))
        self.assertNotIn("before-rotate", read_text(log_file))
        self.assertNotIn("after-rotate", read_text(log_file + ".1"))
        process.terminate()
        self.assertEqual(process.wait(20), 0)
        self.assertEqual(read_text(stderr_path), "")


def connect_from(source, port, timeout=15.0):
    """A client socket bound to the loopback address `source` (Linux routes every
    127.0.0.0/8 address to lo), connected to the server on 127.0.0.1."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def exchange_from(source, port, payload, half_close=True, timeout=15.0):
    """Like support.exchange, from the loopback address `source`."""
    with connect_from(source, port, timeout) as sock:
        if payload:
            sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return support.read_until_closed(sock)


def reset(sock):
    """Closes `sock` with a TCP reset (SO_LINGER 0), as a killed client's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class PerHostLimitTests(_ServerTestCase):
    """--max-connections-per-host: one address cannot take every place."""

    def idle_connections(self, count, source="127.0.0.1"):
        socks = []
        for _ in range(count):
            sock = connect_from(source, self.server.port)
            self.addCleanup(sock.close)
            socks.append(sock)
        return socks

    def call_until_served(self, limit_seconds=5.0):
        """Calls `true` until it is not refused with 3004 (places free up as the server
        notices closed connections); returns the last reply."""
        deadline = time.monotonic() + limit_seconds
        while True:
            reply = self.call("true", timeout=15)
            if reply["code"] != 3004 or time.monotonic() > deadline:
                return reply
            time.sleep(0.05)

    def test_connections_beyond_the_per_host_limit_get_3004_while_other_hosts_are_served(self):
        self.start("--max-connections-per-host", "3", "--request-timeout", "30")
        idle = self.idle_connections(3)
        idle[2].sendall(b'{"auth_key": ')  # a request under way counts the same
        started = time.monotonic()
        reply = self.raw(b"", half_close=False, timeout=15)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertNotRan(reply, 3004)
        self.assertEqual(reply["message"], "server busy: --max-connections-per-host (3) "
                                           "reached for 127.0.0.1")
        # Another address is served meanwhile.
        other = json.loads(exchange_from("127.0.0.2", self.server.port,
                                         body(command="echo", arguments=["other"]))
                           .decode("utf-8"))
        self.assertRan(other, 0)
        self.assertEqual(other["message"], "other")
        log_text = self.server.log_text()
        self.assertRegex(log_text, r"WARNING client=127\.0\.0\.1:\d+ key=- command=- "
                                   r"arguments=- code=3004 ")
        # Once the idle clients go, their address is served again.
        for sock in idle:
            sock.close()
        self.assertRan(self.call_until_served(), 0)

    def test_ipv4_mapped_clients_are_counted_as_their_ipv4_address(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            self.start("--host", "::", "--max-connections-per-host", "2",
                       "--request-timeout", "30")
        except AssertionError as error:
            self.skipTest("cannot listen on :: (%s)" % error)
        # A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
        self.idle_connections(2)
        reply = self.raw(b"", half_close=False, timeout=15)
        self.assertNotRan(reply, 3004)
        self.assertEqual(reply["message"], "server busy: --max-connections-per-host (2) "
                                           "reached for 127.0.0.1")

    def test_places_are_counted_back_to_zero_after_many_refused_and_served_connections(self):
        self.start("--max-connections-per-host", "2", "--max-connections", "3",
                   "--request-timeout", "2")
        for _ in range(5):
            idle = self.idle_connections(2)
            # Refused for the address, then for the server as a whole.
            self.assertNotRan(self.raw(b"", half_close=False, timeout=15), 3004)
            third = self.idle_connections(1, "127.0.0.2")
            reply = json.loads(exchange_from("127.0.0.3", self.server.port, body())
                               .decode("utf-8"))
            self.assertNotRan(reply, 3004)
            self.assertIn("--max-connections (3)", reply["message"])
            # Closed mid-request, reset, and a request cut short by its client.
            idle[0].sendall(b'{"auth_key": ')
            idle[0].shutdown(socket.SHUT_WR)
            reset(idle[1])
            third[0].sendall(body(command="sleep", arguments=["0.2"]))
            support.read_until_gone(idle[0])  # its 2001
            idle[0].close()
            reset(third[0])
            self.assertRan(self.call_until_served(), 0)
            self.assertRan(self.call("echo", ["served"]), 0)
        # Nothing leaked, and nothing went below zero: exactly the limit is let in.
        time.sleep(0.5)  # the sleep 0.2 of the last reset client is over
        self.idle_connections(2)
        reply = self.raw(b"", half_close=False, timeout=15)
        self.assertEqual(reply["message"], "server busy: --max-connections-per-host (2) "
                                           "reached for 127.0.0.1")
        other = json.loads(exchange_from("127.0.0.2", self.server.port, body())
                           .decode("utf-8"))
        self.assertRan(other, 0)

    def test_zero_means_no_per_host_limit(self):
        self.start("--max-connections-per-host", "0", "--max-connections", "40",
                   "--request-timeout", "30")
        self.idle_connections(38)
        self.assertRan(self.call("true", timeout=15), 0)


class GoneClientTests(_ServerTestCase):
    """A client that goes away while its command runs frees its place at once."""

    def wait_for_log(self, pattern, limit_seconds=15.0):
        deadline = time.monotonic() + limit_seconds
        while True:
            match = re.search(pattern, self.server.log_text(), re.M)
            if match or time.monotonic() > deadline:
                self.assertIsNotNone(match, "%r not in the log:\n%s"
                                     % (pattern, self.server.log_text()))
                return match
            time.sleep(0.05)

    def test_client_that_resets_while_its_command_runs_frees_its_place_at_once(self):
        self.start("--max-connections", "1")
        gone = socket.create_connection((self.server.host, self.server.port), timeout=15)
        self.addCleanup(gone.close)
        gone.sendall(body(command="sleep", arguments=["6"]))
        time.sleep(0.5)  # the command is running
        started = time.monotonic()
        reset(gone)
        reply = self.call("echo", ["next"], timeout=15)
        self.assertRan(reply, 0)  # not 3004
        self.assertLess(time.monotonic() - started, 3.0)
        self.wait_for_log(r"INFO client=127\.0\.0\.1:\d+ went away while its command "
                          r"runs \(.+\); its reply will be dropped$")
        # The command runs on; its audit line says the client went away.
        audit = self.wait_for_log(r'command="default::sleep" arguments=\["6"\] code=0 '
                                  r"exit=0 duration_ms=(\S+) client_gone=true$", 20.0)
        self.assertGreater(float(audit.group(1)), 5500)
        self.assertRan(self.call("true"), 0)
        self.assertEqual(self.server.stop(), 0)
        self.assertNotIn("Traceback", self.server.log_text())

    def test_half_closing_client_still_gets_its_reply(self):
        # `echo ... | nc -N` and exchange(half_close=True) end their sending side at
        # once: that is not going away.
        self.start("--max-connections", "1")
        self.assertRan(self.call("sleep", ["1"]), 0, exit_code=0)
        with socket.create_connection((self.server.host, self.server.port),
                                      timeout=15) as sock:
            sock.sendall(body(command="sleep", arguments=["1"]))
            time.sleep(0.3)
            sock.sendall(b"bytes after the request are ignored\n")
            time.sleep(0.2)
            sock.shutdown(socket.SHUT_WR)
            reply = support.decode_reply(support.read_until_closed(sock))
        self.assertRan(reply, 0, exit_code=0)
        self.assertNotIn("went away", self.server.log_text())
        self.assertNotIn("client_gone", self.server.log_text())

    def test_client_that_half_closes_then_resets_is_noticed_too(self):
        self.start("--max-connections", "1")
        gone = socket.create_connection((self.server.host, self.server.port), timeout=15)
        self.addCleanup(gone.close)
        gone.sendall(body(command="sleep", arguments=["6"]))
        gone.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # the server has seen the end of the request stream
        started = time.monotonic()
        reset(gone)
        self.assertRan(self.call("echo", ["next"], timeout=15), 0)
        self.assertLess(time.monotonic() - started, 3.0)
        self.wait_for_log(r"went away while its command runs")

    def test_sigterm_waits_for_the_command_of_a_client_that_went_away(self):
        self.start("--max-connections", "1", "--shutdown-timeout", "30")
        gone = socket.create_connection((self.server.host, self.server.port), timeout=15)
        self.addCleanup(gone.close)
        gone.sendall(body(command="sleep", arguments=["2"]))
        time.sleep(0.5)
        reset(gone)
        self.wait_for_log(r"went away while its command runs")
        started = time.monotonic()
        self.server.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.server.process.wait(20), 0)
        # Not killed at once: it ran its 2 s, as it would have with its client there.
        self.assertGreater(time.monotonic() - started, 1.0)
        self.assertRegex(self.server.log_text(), r'command="default::sleep" '
                         r'arguments=\["2"\] code=0 exit=0 .* client_gone=true')


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


class DurationBoundsTests(_ServerTestCase):
    """Issue 12, item 2: no duration a user can give reaches epoll.poll() as a wait it
    cannot take (OverflowError there once ended the server and every command)."""

    # The longest duration any flag or setting accepts (README: 604800 s, 7 days).
    MAX_SECONDS = "604800"

    def test_a_duration_beyond_7_days_is_a_usage_error_and_no_server_starts(self):
        # Each of these once reached epoll.poll() and raised OverflowError, which ended
        # the server and every command it ran.
        config_dir = relay_config(self, relays=support.QUIET_RELAYS)
        for flag, value in (("--timeout", "inf"), ("--timeout", "604801"),
                            ("--request-timeout", "2592000"),
                            ("--request-timeout", "inf"),
                            ("--shutdown-timeout", "1e12"),
                            ("--shutdown-timeout", "nan")):
            with self.subTest(flag=flag, value=value):
                status, out, err = run_to_exit(
                    self, ["--config-dir", config_dir, "--host", "127.0.0.1", "--port",
                           "0", flag, value], self.PROGRAM, timeout=10.0)
                self.assertEqual(status, 2, err)
                self.assertEqual(out, "")
                self.assertEqual(err.count("\n"), 1, err)
                self.assertTrue(err.startswith("uscmdrelay: error: argument %s: %r is "
                                               % (flag, value)), err)
                self.assertIn("604800", err)

    def test_a_command_timeout_beyond_7_days_is_a_config_error(self):
        config_dir = relay_config(self, relays="[default]\nsleeper = sleep 5\n"
                                               "sleeper.timeout = 3000000\n")
        status, out, err = run_to_exit(
            self, ["--config-dir", config_dir, "--host", "127.0.0.1", "--port", "0"],
            self.PROGRAM, timeout=10.0)
        self.assertEqual(status, 2, err)
        self.assertEqual(err, "Config error: %s: [default] sleeper.timeout: '3000000' is "
                              "out of range (0 to 604800 seconds; 0 for no limit)\n"
                         % os.path.join(config_dir, "relays.conf"))

    def test_the_longest_durations_allowed_keep_the_server_serving(self):
        config_dir = relay_config(self, relays="[default]\ntrue = /bin/true\n"
                                               "sleeper = sleep 2\n"
                                               "sleeper.timeout = %s\n" % self.MAX_SECONDS)
        server = self.start("--timeout", self.MAX_SECONDS, "--request-timeout",
                            self.MAX_SECONDS, "--shutdown-timeout", self.MAX_SECONDS,
                            config_dir=config_dir)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.addCleanup(idle.close)
        sleeping = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.addCleanup(sleeping.close)
        sleeping.sendall(body(command="sleeper"))
        time.sleep(0.5)  # the sleeper's deadline and the idle one are in the loop now
        self.assertRan(self.call("true"), 0)
        self.assertRan(support.decode_reply(support.read_until_closed(sleeping)), 0)
        self.assertIsNone(server.process.poll())
        idle.close()
        self.assertEqual(server.stop(), 0)
        self.assertNotIn("Traceback", server.log_text())



class NestingTests(_ServerTestCase):
    """Issue 12, item 3: no nesting a client sends reaches json's recursion (a 9999 with
    a traceback in the log, before any authentication)."""

    def nested(self, depth):
        """Request-like payloads nested `depth` levels deep, in several forms."""
        request = body(arguments=["x"]).decode("ascii")
        return [
            ("arrays", "[" * depth + "]" * depth + "\n"),
            ("objects", '{"a": ' * depth + "1" + "}" * depth + "\n"),
            ("arguments of a request", request.replace(
                '["x"]', "[" * depth + "]" * depth)),
            ("opened only, then half-closed", "[" * depth),
            ("mixed, one line per level", '[{"a":\n' * depth),
        ]

    def test_any_nesting_depth_gets_2001_one_log_line_and_no_traceback(self):
        server = self.start("--max-request", "2000000")
        for depth in (100, 1000, 10000, 100000):
            for form, payload in self.nested(depth):
                with self.subTest(depth=depth, form=form):
                    reply = self.raw(payload.encode("ascii"))
                    self.assertNotRan(reply, 2001)
                    self.assertEqual(reply["message"],
                                     "invalid JSON: nested deeper than 32 levels")
        self.assertRan(self.call("true"), 0)
        log_text = server.log_text()
        self.assertNotIn("Traceback", log_text)
        self.assertNotIn("9999", log_text)
        self.assertEqual([audit[3] for audit in AUDIT_LINE.findall(log_text)],
                         ["2001"] * 20 + ["0"])


if __name__ == "__main__":
    unittest.main()
