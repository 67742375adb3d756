"""Faults the server must survive: a bug in one request, running out of descriptors."""

import os
import socket
import threading
import time
import unittest
from unittest import mock

from tests import support

from uscmdrelay import dispatch, executor, spawn  # noqa: E402
from uscmdrelay.config import Command, load_config  # noqa: E402
from uscmdrelay.server import Options, RelayServer  # noqa: E402


def setUpModule():
    # What service.serve() does before it builds the server: commands then start as in
    # production (posix_spawn).
    spawn.seal_descriptors()


def serve_in_thread(test, config, options):
    """A RelayServer in this process, serving in a thread until `test`'s cleanup;
    returns (server, port)."""
    server = RelayServer(config, options)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    test.addCleanup(server.server_close)
    test.addCleanup(thread.join, 30)
    test.addCleanup(server.shutdown)
    return server, server.address[1]


class InternalErrorTest(unittest.TestCase):
    """9999 cannot be provoked by a client (that is the point), so the fault is planted
    in the configuration object the server is given: a command whose argv is not a list."""

    def setUp(self):
        directory = support.make_config_dir(self)
        self.config = load_config(directory)
        self.config.clusters["default"]["broken"] = Command("default", "broken", "x", None)
        self.server, self.port = serve_in_thread(self, self.config,
                                                 Options(host="127.0.0.1", port=0))

    def test_a_bug_answers_9999_logs_a_traceback_and_the_server_keeps_serving(self):
        with self.assertLogs("uscmdrelay", "ERROR") as logs:
            reply = support.request(self.port, command="broken")
        self.assertEqual(reply, {"status": "error", "message": "internal server error",
                                 "code": 9999})
        self.assertIn("Traceback", "\n".join(logs.output))
        self.assertNotIn(support.KEY, "\n".join(logs.output))
        self.assertEqual(support.request(self.port, command="echo",
                                         arguments=["still here"])["message"], "still here")


ONCE_RELAYS = """\
[default]
once = /bin/true
once.max_running = 1
"""


def _waitpid_fails(child):
    raise ChildProcessError(10, "No child processes")


def _outcome_fails(*args):
    raise RuntimeError("planted fault building the outcome")


class CommandFailureTest(unittest.TestCase):
    """A fault planted where the server watches a running command or builds its outcome:
    the client still gets 9999, and the command's max_running count and the connection's
    slot are released. waitpid() failing with ECHILD is what an ignored SIGCHLD did."""

    def setUp(self):
        directory = support.make_config_dir(self, relays=ONCE_RELAYS)
        options = Options(host="127.0.0.1", port=0, max_connections=1)
        self.server, self.port = serve_in_thread(self, load_config(directory), options)

    def test_a_fault_in_the_command_finished_path_answers_9999_and_releases_everything(self):
        for target, name, fault in ((spawn.Child, "poll", _waitpid_fails),
                                    (executor, "Outcome", _outcome_fails)):
            with self.subTest(fault=name):
                with mock.patch.object(target, name, fault):
                    with self.assertLogs("uscmdrelay", "ERROR") as logs:
                        reply = support.request(self.port, command="once", timeout=15)
                self.assertEqual(reply, {"status": "error", "code": 9999,
                                         "message": "internal server error"})
                text = "\n".join(logs.output)
                self.assertIn("Traceback", text)
                self.assertIn("internal error while serving 127.0.0.1:", text)
                # once.max_running = 1 and --max-connections 1: a count or a slot kept
                # by the failed run would refuse this one with 3005 or 3004.
                reply = support.request(self.port, command="once", timeout=15)
                self.assertEqual((reply["code"], reply["exit_code"]), (0, 0), reply)


def _reply_fails(reply):
    yield b'{"status": '
    raise RuntimeError("planted fault writing the reply")


class ReplyFailureTest(unittest.TestCase):
    """A fault planted in the pieces of a reply, after its command ended: the connection
    closes (its client sees the end, not a hang), its place in --max-connections is
    freed, and the traceback is logged."""

    def setUp(self):
        directory = support.make_config_dir(self)
        options = Options(host="127.0.0.1", port=0, max_connections=1)
        self.server, self.port = serve_in_thread(self, load_config(directory), options)

    def test_a_fault_writing_the_reply_closes_the_connection_and_frees_its_place(self):
        with mock.patch.object(dispatch, "iter_reply", _reply_fails):
            with self.assertLogs("uscmdrelay", "ERROR") as logs:
                data = support.exchange(self.port, b'{"auth_key": "%s", "command": '
                                        b'"true"}\n' % support.KEY.encode(), timeout=15)
                deadline = time.monotonic() + 15
                while ("planted fault" not in "\n".join(logs.output)
                       and time.monotonic() < deadline):
                    time.sleep(0.05)
        self.assertEqual(data, b"")
        self.assertIn("Traceback", "\n".join(logs.output))
        self.assertIn("planted fault writing the reply", "\n".join(logs.output))
        # --max-connections 1: a place kept by the failed reply would refuse this with 3004.
        reply = support.request(self.port, command="echo", arguments=["next"], timeout=15)
        self.assertEqual((reply["code"], reply["message"]), (0, "next"), reply)


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


@unittest.skipUnless(os.path.isdir("/proc/self"), "needs /proc")
class DescriptorExhaustionTest(unittest.TestCase):

    def test_running_out_of_descriptors_delays_clients_without_crash_or_spin(self):
        directory = support.make_config_dir(self)
        # A shell lowers the limit, then execs the real server: few descriptors to spare.
        server = support.ServerProcess(
            directory, args=["--request-timeout", "30", "--max-connections-per-host", "0"],
            wrapper=["sh", "-c", "ulimit -n 40 && exec \"$@\"", "sh"])
        self.addCleanup(server.stop)

        held = []
        self.addCleanup(lambda: [sock.close() for sock in held])
        for _ in range(60):  # more than the server has descriptors for
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        deadline = time.monotonic() + 10
        while "cannot accept connections" not in server.log_text():
            self.assertLess(time.monotonic(), deadline, server.log_text())
            time.sleep(0.05)

        before = _cpu_seconds(server.process.pid)
        time.sleep(1.0)
        spent = _cpu_seconds(server.process.pid) - before
        self.assertLess(spent, 0.5, "the server spins while out of descriptors")
        self.assertIsNone(server.process.poll())

        for sock in held:
            sock.close()
        del held[:]
        # Once descriptors are free again, clients are served as usual.
        deadline = time.monotonic() + 20
        while True:
            reply = support.request(server.port, command="echo", arguments=["back"])
            if reply["code"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(reply["message"], "back")
        self.assertNotIn("Traceback", server.log_text())


if __name__ == "__main__":
    unittest.main()
