"""End-to-end tests of live output (`"stream": true`, issue 13) against a real server.

Real server subprocesses, real sockets, real children (tests/fixtures/live.py), and nc,
socat and `uscmdrelay call` as clients. Every process a test starts is stopped by PID;
every wait is bounded.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests import support
from tests.support import KEY

LIVE = os.path.join(support.FIXTURES, "live.py")
WAIT_SECONDS = 30.0
STREAM_RELAYS = """
[default]
tick = {py} {live} tick
interleave = {py} {live} interleave
split = {py} {live} split
family = {py} {live} family
flood = {py} {live} flood
flood.timeout = 3
capped = {py} {live} flood
capped.max_output = 1000
deploy = {py} {live} tick 3 0.2
""".format(py=sys.executable, live=LIVE)


def stream_request(command, arguments=(), stream=True):
    body = {"auth_key": KEY, "command": command, "arguments": list(arguments)}
    if stream:
        body["stream"] = True
    return (json.dumps(body) + "\n").encode("utf-8")


class LineReader(object):
    """Reads JSON lines from a socket, noting when each arrived (time.monotonic())."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def next(self):
        """(arrival time, object) of the next line, or None at the end of the stream."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return time.monotonic(), json.loads(line.decode("utf-8"))

    def rest(self):
        """Every line up to the end of the stream, as [(time, object)]."""
        lines = []
        while True:
            entry = self.next()
            if entry is None:
                return lines
            lines.append(entry)


def connect(test, port, rcvbuf=None):
    sock = socket.socket()
    test.addCleanup(sock.close)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_SECONDS)
    sock.connect(("127.0.0.1", port))
    return sock


def stream_lines(test, port, command, arguments=()):
    """Sends a streaming request; returns every line as [(time, object)]."""
    sock = connect(test, port)
    sock.sendall(stream_request(command, arguments))
    return LineReader(sock).rest()


def split_lines(lines):
    """(events as [(stream, data)], the final object) of `lines`; checks the shape."""
    objects = [obj for _, obj in lines]
    assert objects and "stream" not in objects[-1], objects
    events = [(obj["stream"], obj["data"]) for obj in objects[:-1]]
    return events, objects[-1]


def wait_until(condition, seconds=WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def read_pid(path):
    assert wait_until(lambda: os.path.exists(path)), "no pid file %s" % path
    with open(path) as handle:
        return int(handle.read())


def alive(pid):
    """True while `pid` runs (a zombie has ended)."""
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except (IOError, OSError):
        return False
    return False


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class _StreamServerTestCase(unittest.TestCase):
    ARGS = ["--shutdown-timeout", "0", "--max-output", "3000000"]

    @classmethod
    def setUpClass(cls):
        support.start_class_server(cls, relays=STREAM_RELAYS, args=cls.ARGS)

    @classmethod
    def tearDownClass(cls):
        support.stop_class_server(cls)

    def temp_dir(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-stream-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory


class ProtocolTests(_StreamServerTestCase):

    def test_lines_arrive_one_by_one_while_the_command_runs(self):
        lines = stream_lines(self, self.server.port, "tick", ["5", "0.2"])
        events, final = split_lines(lines)
        self.assertEqual(events, [("stdout", "tick %d\n" % index) for index in range(5)])
        times = [when for when, _ in lines]
        # A line every 0.2 s: each came on its own, long before the command was over.
        for earlier, later in zip(times, times[1:-1]):
            self.assertGreater(later - earlier, 0.1, times)
        self.assertGreater(times[-1] - times[0], 0.6, times)
        self.assertEqual((final["code"], final["exit_code"], final["stdout"],
                          final["stderr"], final["streamed"], final["truncated"]),
                         (0, 0, "", "", True, False))
        self.assertEqual(final["message"], "command exited with status 0")

    def test_stdout_and_stderr_events_come_in_the_order_written(self):
        events, final = split_lines(stream_lines(self, self.server.port, "interleave",
                                                 ["4"]))
        expected = []
        for index in range(4):
            expected += [("stdout", "out %d\n" % index), ("stderr", "err %d\n" % index)]
        self.assertEqual(events, expected)
        self.assertEqual(final["code"], 0)

    def test_a_character_split_across_reads_arrives_whole(self):
        events, final = split_lines(stream_lines(self, self.server.port, "split"))
        self.assertEqual(events, [("stdout", "a"), ("stdout", "\u20ac b\n")])
        self.assertEqual(final["code"], 0)

    def test_a_failing_command_ends_with_3001_and_its_exit_status(self):
        events, final = split_lines(stream_lines(self, self.server.port, "tick",
                                                 ["x", "0"]))
        self.assertEqual(events[-1][0], "stderr")
        self.assertIn("ValueError", "".join(data for _, data in events))
        self.assertEqual((final["code"], final["exit_code"], final["streamed"]),
                         (3001, 1, True))

    def test_a_refusal_before_the_start_is_just_the_final_line(self):
        data = support.exchange(self.server.port, stream_request("nosuch"))
        self.assertEqual(support.decode_reply(data),
                         {"status": "error", "code": 2004,
                          "message": "unknown command 'nosuch' in cluster 'default'"})

    def test_stream_must_be_a_json_boolean(self):
        for value in (1, "true", None, [], {}):
            with self.subTest(value=value):
                body = {"auth_key": KEY, "command": "true", "stream": value}
                reply = support.decode_reply(support.exchange(
                    self.server.port, (json.dumps(body) + "\n").encode()))
                self.assertEqual((reply["code"], reply["message"]),
                                 (2002, "stream must be true or false"))

    def test_stream_false_is_one_reply_as_before(self):
        body = {"auth_key": KEY, "command": "tick", "arguments": ["2", "0"],
                "stream": False}
        reply = support.decode_reply(support.exchange(
            self.server.port, (json.dumps(body) + "\n").encode()))
        self.assertEqual((reply["code"], reply["stdout"]), (0, "tick 0\ntick 1\n"))
        self.assertNotIn("streamed", reply)

    def test_many_small_writes_are_coalesced(self):
        events, final = split_lines(stream_lines(self, self.server.port, "flood",
                                                 ["2000000", os.devnull]))
        self.assertEqual(sum(len(data) for _, data in events), 2000000)
        # 64 KiB writes: nowhere near a line per write, let alone per byte.
        self.assertLess(len(events), 2000000 // 1000)
        self.assertEqual(final["code"], 0)


class OutputCapTests(_StreamServerTestCase):
    ARGS = ["--shutdown-timeout", "0", "--max-output", "3000"]

    def test_max_output_caps_the_bytes_streamed(self):
        events, final = split_lines(stream_lines(self, self.server.port, "flood",
                                                 ["100000", os.devnull]))
        self.assertEqual("".join(data for _, data in events), ("y" * 65535 + "\n")[:3000])
        self.assertEqual((final["code"], final["truncated"]), (0, True))

    def test_the_command_max_output_caps_both_modes(self):
        events, final = split_lines(stream_lines(self, self.server.port, "capped",
                                                 ["100000", os.devnull]))
        self.assertEqual("".join(data for _, data in events), "y" * 1000)
        self.assertEqual((final["code"], final["truncated"]), (0, True))
        reply = support.request(self.server.port, command="capped",
                                arguments=["100000", os.devnull])
        self.assertEqual((reply["stdout"], reply["truncated"]), ("y" * 1000, True))


class SlowAndGoneClientTests(_StreamServerTestCase):
    # No cap in the way: output past --max-output is read and dropped, not waited for.
    ARGS = ["--shutdown-timeout", "0", "--request-timeout", "30", "--max-output",
            "1073741824"]

    def test_a_client_that_stops_reading_blocks_the_command_until_its_timeout(self):
        pidfile = os.path.join(self.temp_dir(), "flood.pid")
        sock = connect(self, self.server.port, rcvbuf=16384)
        sock.sendall(stream_request("flood", ["1000000000", pidfile]))
        pid = read_pid(pidfile)
        self.addCleanup(kill_quietly, pid)
        server_pid = self.server.process.pid
        time.sleep(0.5)
        before = (rss_kib(pid), rss_kib(server_pid))
        time.sleep(2.0)  # the command's timeout is 3 s
        after = (rss_kib(pid), rss_kib(server_pid))
        # It tries to write 1 GB; nobody reads: both stay flat (a server that buffered
        # would have grown by hundreds of MB in these 2 s).
        self.assertLess(after[0] - before[0], 4096, (before, after))
        self.assertLess(after[1] - before[1], 8192, (before, after))
        self.assertTrue(wait_until(lambda: not alive(pid), 10.0), "still running")
        events, final = split_lines(LineReader(sock).rest())
        received = sum(len(data) for _, data in events)
        self.assertLess(received, 10 * 1024 * 1024)  # it was blocked, not just slow
        self.assertEqual((final["code"], final["streamed"]), (3003, True))

    def _gone_test(self, close):
        directory = self.temp_dir()
        sock = connect(self, self.server.port)
        sock.sendall(stream_request("family", [os.path.join(directory, "pid")]))
        reader = LineReader(sock)
        first = reader.next()
        self.assertEqual(first[1], {"stream": "stdout", "data": "ready\n"})
        pids = [read_pid(os.path.join(directory, "pid." + which))
                for which in ("parent", "child")]
        for pid in pids:
            self.addCleanup(kill_quietly, pid)
        close(sock)
        for pid in pids:
            self.assertTrue(wait_until(lambda: not alive(pid), 15.0), "%d lives" % pid)
        self.assertTrue(wait_until(lambda: "client_gone=true" in self.server.log_text(),
                                   10.0), self.server.log_text())
        self.assertIn("went away while its command streams", self.server.log_text())

    def test_a_client_that_resets_mid_stream_gets_its_process_group_killed(self):
        def reset(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._gone_test(reset)

    def test_a_client_that_closes_mid_stream_gets_its_process_group_killed(self):
        # A plain close looks like a half-close until the next write fails.
        self._gone_test(lambda sock: sock.close())


class ShutdownTests(unittest.TestCase):

    def test_sigterm_during_a_stream_delivers_the_final_line(self):
        directory = support.make_config_dir(self, relays=STREAM_RELAYS)
        server = support.start_server(self, directory, ["--shutdown-timeout", "1"])
        sock = connect(self, server.port)
        sock.sendall(stream_request("tick", ["1000", "0.2"]))
        reader = LineReader(sock)
        self.assertEqual(reader.next()[1]["data"], "tick 0\n")
        server.process.send_signal(signal.SIGTERM)
        events, final = split_lines(reader.rest())
        self.assertTrue(all(stream == "stdout" for stream, _ in events))
        self.assertEqual((final["code"], final["message"], final["streamed"]),
                         (3003, "command killed: the server is shutting down", True))
        self.assertEqual(server.process.wait(WAIT_SECONDS), 0)


class ClientProgramTests(_StreamServerTestCase):

    def need(self, *programs):
        missing = [name for name in programs if shutil.which(name) is None]
        if missing:
            self.skipTest("not installed: %s" % ", ".join(missing))

    def run_pipeline(self, pipeline):
        return support.run_pipeline(self, pipeline, support.environment(
            extra={"PORT": str(self.server.port), "KEY": KEY}), WAIT_SECONDS)

    def test_nc_with_jq_prints_the_output(self):
        self.need("nc", "jq")
        out = self.run_pipeline(
            """echo "{\\"auth_key\\": \\"$KEY\\", \\"command\\": \\"interleave\\","""
            """ \\"arguments\\": [\\"2\\"], \\"stream\\": true}" | nc 127.0.0.1 $PORT"""
            """ | jq -j 'select(.stream == "stdout") | .data'""")
        self.assertEqual(out, "out 0\nout 1\n")

    def test_socat_gets_the_events_then_the_final_line(self):
        self.need("socat")
        out = self.run_pipeline(
            """printf '%s\\n' '{"auth_key": "'"$KEY"'", "command": "tick", "arguments":"""
            """ ["3", "0.1"], "stream": true}' | socat -t 30 - TCP:127.0.0.1:$PORT""")
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(lines[:3], [{"stream": "stdout", "data": "tick %d\n" % index}
                                     for index in range(3)])
        self.assertEqual((lines[3]["code"], lines[3]["streamed"], len(lines)), (0, True, 4))

    def call(self, *args):
        environ = support.environment(extra={"USCMDRELAY_AUTH_KEY": KEY})
        return subprocess.Popen(
            support.command() + ["call", "--port", str(self.server.port)] + list(args),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=environ)

    def test_call_prints_each_line_as_it_comes(self):
        process = self.call("tick", "5", "0.2")
        self.addCleanup(support.stop_process, process)
        times = []
        lines = []
        for line in iter(process.stdout.readline, b""):
            times.append(time.monotonic())
            lines.append(line)
        self.assertEqual(process.wait(WAIT_SECONDS), 0)
        process.stderr.close()
        process.stdout.close()
        self.assertEqual(lines, [b"tick %d\n" % index for index in range(5)])
        for earlier, later in zip(times, times[1:]):
            self.assertGreater(later - earlier, 0.1, times)

    def test_call_writes_stderr_events_to_stderr_and_exits_with_the_status(self):
        process = self.call("interleave", "2")
        out, err = process.communicate(timeout=WAIT_SECONDS)
        self.assertEqual((process.returncode, out, err),
                         (0, b"out 0\nout 1\n", b"err 0\nerr 1\n"))
        process = self.call("tick", "x", "0")
        out, err = process.communicate(timeout=WAIT_SECONDS)
        self.assertEqual(process.returncode, 1)
        self.assertIn(b"ValueError", err)
        self.assertNotIn(b"uscmdrelay:", err)

    def test_interrupting_call_ends_the_remote_command_and_its_group(self):
        directory = self.temp_dir()
        process = self.call("family", os.path.join(directory, "pid"))
        self.addCleanup(support.stop_process, process)
        self.assertEqual(process.stdout.readline(), b"ready\n")
        pids = [read_pid(os.path.join(directory, "pid." + which))
                for which in ("parent", "child")]
        for pid in pids:
            self.addCleanup(kill_quietly, pid)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT_SECONDS)
        self.assertEqual((process.returncode, err), (130, b""))
        for pid in pids:
            self.assertTrue(wait_until(lambda: not alive(pid), 15.0), "%d lives" % pid)

    def test_call_json_prints_every_line_as_received(self):
        process = self.call("--json", "tick", "2", "0")
        out, err = process.communicate(timeout=WAIT_SECONDS)
        self.assertEqual((process.returncode, err), (0, b""))
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], '{"stream": "stdout", "data": "tick 0\\ntick 1\\n"}')
        self.assertEqual(json.loads(lines[-1])["streamed"], True)
        self.assertEqual(len(lines), 2)

    def test_call_no_stream_asks_for_one_reply(self):
        process = self.call("--json", "--no-stream", "tick", "2", "0")
        out, err = process.communicate(timeout=WAIT_SECONDS)
        reply = support.decode_reply(out)
        self.assertEqual((reply["stdout"], "streamed" in reply), ("tick 0\ntick 1\n", False))


class _OlderServer(object):
    """A server that knows no `stream` field: it refuses one with 2002, as releases
    before streaming do, and answers anything else with a fixed reply."""

    def __init__(self, test):
        self.requests = []
        self.listener = socket.socket()
        test.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(WAIT_SECONDS)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve)
        self.thread.daemon = True
        self.thread.start()

    def _serve(self):
        for _ in range(2):
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(WAIT_SECONDS)
                data = b""
                while not data.endswith(b"\n"):
                    data += sock.recv(65536)
                request = json.loads(data.decode())
                self.requests.append(request)
                if "stream" in request:
                    reply = {"status": "error", "message": 'unknown field "stream"',
                             "code": 2002}
                else:
                    reply = {"status": "success", "message": "old", "code": 0,
                             "exit_code": 0, "stdout": "old\n", "stderr": "",
                             "duration_ms": 1.0, "truncated": False}
                sock.sendall((json.dumps(reply) + "\n").encode())


class OlderServerTests(unittest.TestCase):

    def test_call_asks_an_older_server_again_without_stream_silently(self):
        server = _OlderServer(self)
        environ = support.environment(extra={"USCMDRELAY_AUTH_KEY": KEY})
        process = subprocess.Popen(
            support.command() + ["call", "--port", str(server.port), "echo", "x"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=environ)
        out, err = process.communicate(timeout=WAIT_SECONDS)
        self.assertEqual((process.returncode, out, err), (0, b"old\n", b""))
        server.thread.join(WAIT_SECONDS)
        self.assertEqual([request.get("stream") for request in server.requests],
                         [True, None])


if __name__ == "__main__":
    unittest.main()
