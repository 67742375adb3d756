"""End-to-end tests of uscmdrelay as a service: signals, systemd, `init`, command environment.

Every test runs the real server (the built .pyz; the `Source*` classes repeat a
representative part against the source tree) and talks to it over 127.0.0.1. systemd's
side is played by the test itself: it binds the $NOTIFY_SOCKET datagram socket, runs the
server under `systemd-socket-activate`, and points $JOURNAL_STREAM at the server's stderr.
"""

import binascii
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest

from tests import support
from tests.support import (FIXTURES, KEY, OTHER_KEY, REPLY_TIMEOUT, ServerProcess,
                           decode_reply, request, start_server)

REPORT = os.path.join(FIXTURES, "report_environment.py")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
UNSHARE = shutil.which("unshare")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SAMPLES = os.path.join(support.ROOT, "samples")
WAIT_SECONDS = 15.0
SERVICE_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")

# {dir} is the config dir. `slow` and `pidsleep` leave a file there once they run; `slow`
# then waits (up to 20 s) for the test to create {dir}/slow.release.
RELAYS = """\
[default]
true = /bin/true
fail = sh -c "exit 3"
which = echo one
slow = sh -c "touch {dir}/slow.started; for i in $(seq 400); do [ -e {dir}/slow.release ] \
&& break; sleep 0.05; done; echo finished"
pidsleep = sh -c "echo $$ > {dir}/pid.tmp; mv {dir}/pid.tmp {dir}/sleep.pid; exec sleep 30"
report = {python} {report}
missing = /nonexistent/program

[ops]
report = {python} {report}
"""

NEW_RELAYS = """\
[default]
true = /bin/true
which = echo two
"""

NEW_KEY = "new-key-0123456789abcdef"
NEW_AUTH = """\
[{key}]
description = new client
auth_clusters = default
""".format(key=NEW_KEY)

BROKEN_RELAYS = """\
[default]
which = echo "unclosed
"""

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

# `orphan` leaves a `sleep 2` behind and exits: the sleep is orphaned.
ORPHAN_RELAYS = """\
[default]
orphan = sh -c "sleep 2 >/dev/null 2>&1 & echo started"
fail = sh -c "exit 3"
"""


# Both report the signal masks the command has; the second starts with Popen (a cwd).
STATUS_RELAYS = """\
[default]
status = cat /proc/self/status
status-in-root = cat /proc/self/status
status-in-root.cwd = /
"""


def signal_bits(*signums):
    return sum(1 << (int(signum) - 1) for signum in signums)


def signal_mask(status, field):
    """A mask line of a /proc/PID/status text (SigIgn, SigBlk), as an int, without
    glibc's own signals (32 and 33, below the SIGRTMIN it reports): its posix_spawn
    leaves them ignored."""
    valid = [signum for signum in range(1, signal.NSIG)
             if not 32 <= signum < signal.SIGRTMIN]
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.strip(), 16) & signal_bits(*valid)
    raise AssertionError("no %s in %r" % (field, status))


def body(command, auth_key=KEY):
    return (json.dumps({"auth_key": auth_key, "command": command}) + "\n").encode("utf-8")


def receive(sock):
    """Reads until the server closes; returns the decoded reply."""
    return decode_reply(support.read_until_closed(sock))


def wait_until(predicate, what, timeout=WAIT_SECONDS):
    """Polls `predicate` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %g s waiting for %s" % (timeout, what))
        time.sleep(0.02)


def wait_for_log(server, pattern, start=0, timeout=WAIT_SECONDS):
    """Waits for `pattern` (a multi-line regex) in the server's log past offset `start`."""
    regex = re.compile(pattern, re.M)
    try:
        return wait_until(lambda: regex.search(server.log_text(), start),
                          "%r in the log" % pattern, timeout)
    except AssertionError as error:
        raise AssertionError("%s; log:\n%s" % (error, server.log_text()))


def release(directory):
    """Lets the `slow` command finish."""
    open(os.path.join(directory, "slow.release"), "w").close()


def read_file(path):
    """The text of `path`, or None if it is gone (a /proc entry whose process exited
    between listing and reading: ENOENT, or ESRCH once opened)."""
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def alive(pid):
    """True while `pid` exists and is not a zombie."""
    stat_text = read_file("/proc/%d/stat" % pid)
    if stat_text is None:
        return False
    return stat_text.rsplit(")", 1)[1].split()[0] != "Z"


def run_cli(program, args, env=None):
    """Runs uscmdrelay with `args`; returns (exit status, stdout, stderr)."""
    process = subprocess.Popen(support.command(program) + list(args),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True,
                               env=support.environment(program, env))
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out, err


stop_process = support.stop_process


def python_wrapper(setup, *arguments):
    """A wrapper for ServerProcess: Python runs `setup` (os, signal and sys imported),
    then execs the server's argv, which follows `arguments`."""
    code = "import os, signal, sys\n%s\nargv = sys.argv[%d:]\nos.execv(argv[0], argv)" % (
        setup, len(arguments) + 1)
    return [sys.executable, "-c", code] + list(arguments)


def process_state(pid):
    """(state letter, parent pid) from /proc/PID/stat, or None for no such process."""
    text = read_file("/proc/%d/stat" % pid)
    if text is None:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def children(parent):
    """[(pid, state letter)] of the processes whose parent is `parent`, zombies too."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            state = process_state(int(name))
            if state is not None and state[1] == parent:
                found.append((int(name), state[0]))
    return found


_unshare_works = []


def unshare_works():
    """True when this process may run a command as PID 1 of a new PID namespace."""
    if not _unshare_works:
        try:
            works = UNSHARE is not None and subprocess.call(
                [UNSHARE, "--fork", "--pid", "--mount-proc", "--kill-child", "true"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=30) == 0
        except (OSError, subprocess.TimeoutExpired):
            works = False
        _unshare_works.append(works)
    return _unshare_works[0]


class ServiceTestCase(unittest.TestCase):
    program = "pyz"

    def config_dir(self, relays=RELAYS):
        directory = support.make_config_dir(self, relays=None)
        return self.write_relays(directory, relays)

    def write_relays(self, directory, relays):
        text = relays.format(dir=directory, python=shlex.quote(sys.executable),
                             report=shlex.quote(REPORT))
        return support.write_config(directory, auth=None, relays=text)

    def start(self, directory=None, args=(), env=None):
        return start_server(self, directory or self.config_dir(), args=args,
                            program=self.program, env=env)

    def send(self, port, command, auth_key=KEY):
        """Sends a request and returns the socket, for a reply read later."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(body(command, auth_key))
        return sock

    def assert_refused(self, port):
        """A new connection is refused, or reset without a reply."""
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            return
        with sock:
            try:
                sock.sendall(body("true"))
                data = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return
            except socket.timeout:
                self.fail("a connection made after the stop signal was accepted by the "
                          "kernel and never answered: the listener is still open")
        self.fail("a connection made after the stop signal was accepted; it read %r" % data)

    def configtest_error(self, directory):
        """What `configtest` prints for the broken configuration in `directory`."""
        code, out, err = run_cli(self.program, ["--config-dir", directory, "configtest"])
        self.assertEqual(code, 2, out + err)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("Config error: "), err)
        return lines[0]

    def report(self, port, command="report", auth_key=KEY):
        """Runs the report fixture through the server; returns what it printed."""
        reply = request(port, auth_key=auth_key, command=command)
        self.assertEqual(reply["code"], 0, reply)
        return json.loads(reply["stdout"])

    # -- checks shared by the .pyz and the source tree -----------------------------------

    def check_graceful_stop(self, signum):
        directory = self.config_dir()
        server = self.start(directory)
        self.assertEqual(request(server.port, command="fail")["code"], 3001)
        sock = self.send(server.port, "slow")
        self.addCleanup(release, directory)  # runs before the server is stopped
        wait_until(lambda: os.path.exists(os.path.join(directory, "slow.started")),
                   "the slow command to start")
        start = len(server.log_text())
        server.process.send_signal(signum)
        stopping = wait_for_log(server, r"stopping: no new connections; (\d+) requests? in "
                                        r"flight", start)
        self.assertEqual(stopping.group(1), "1")
        self.assert_refused(server.port)
        self.assertIsNone(server.process.poll(), "exited with a request in flight")
        release(directory)
        reply = receive(sock)
        self.assertEqual((reply["code"], reply["stdout"]), (0, "finished\n"), reply)
        self.assertEqual(server.process.wait(20), 0, server.log_text())
        self.assertRegex(server.log_text(), r"stopped: 2 requests served, 1 of them errors")

    def check_reload_applies_to_later_requests_only(self):
        directory = self.config_dir()
        server = self.start(directory)
        self.assertEqual(request(server.port, command="which")["stdout"], "one\n")
        sock = self.send(server.port, "slow")
        self.addCleanup(release, directory)  # runs before the server is stopped
        wait_until(lambda: os.path.exists(os.path.join(directory, "slow.started")),
                   "the slow command to start")
        self.write_relays(directory, NEW_RELAYS)
        support.write_config(directory, auth=NEW_AUTH, relays=None)
        start = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"configuration reloaded", start)
        self.assertEqual(request(server.port, NEW_KEY, "which")["stdout"], "two\n")
        self.assertEqual(request(server.port, KEY, "which")["code"], 1001)
        # `slow` is gone from the new configuration, yet the run started before finishes.
        self.assertEqual(request(server.port, NEW_KEY, "slow")["code"], 2004)
        release(directory)
        reply = receive(sock)
        self.assertEqual((reply["code"], reply["stdout"]), (0, "finished\n"), reply)

    def check_notify_sequence(self):
        listener, address = self.notify_socket()
        directory = self.config_dir()
        server = self.start(directory, env={"NOTIFY_SOCKET": address})
        ready = self.next_notification(listener)
        self.assertEqual(ready.get("READY"), "1", ready)
        self.assertEqual(ready.get("MAINPID"), str(server.process.pid), ready)
        self.assertIn(str(server.port), ready.get("STATUS", ""), ready)
        self.assertEqual(request(server.port)["code"], 0)

        for broken in (False, True):
            if broken:
                self.write_relays(directory, BROKEN_RELAYS)
            before_usec = time.monotonic() * 1e6
            server.process.send_signal(signal.SIGHUP)
            reloading = self.next_notification(listener)
            self.assertEqual(reloading.get("RELOADING"), "1", reloading)
            # CLOCK_MONOTONIC in microseconds: the same clock as time.monotonic() here.
            usec = int(reloading.get("MONOTONIC_USEC", "missing"))
            self.assertLess(abs(usec - before_usec), 30e6, reloading)
            ready = self.next_notification(listener)
            self.assertEqual(ready.get("READY"), "1", ready)
            self.assertTrue(ready.get("STATUS"), ready)

        server.process.send_signal(signal.SIGTERM)
        stopping = self.next_notification(listener)
        self.assertEqual(stopping.get("STOPPING"), "1", stopping)
        self.assertEqual(server.process.wait(20), 0, server.log_text())

    def notify_socket(self, abstract=False):
        """A bound AF_UNIX datagram socket and the $NOTIFY_SOCKET value naming it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = "uscmdrelay-test-%d-%s" % (os.getpid(),
                                              binascii.hexlify(os.urandom(8)).decode())
            sock.bind("\0" + name)
            address = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="uscmdrelay-notify-")
            self.addCleanup(shutil.rmtree, directory, True)
            address = os.path.join(directory, "notify")
            sock.bind(address)
        sock.settimeout(WAIT_SECONDS)
        return sock, address

    def next_notification(self, sock):
        """The next datagram as a dict of its NAME=value lines."""
        try:
            data = sock.recv(65536)
        except socket.timeout:
            self.fail("no notification within %g s" % WAIT_SECONDS)
        fields = {}
        for line in data.decode("utf-8").split("\n"):
            if line:
                name, _, value = line.partition("=")
                fields[name] = value
        return fields

    def socket_activated(self, directory, extra_args=()):
        """Starts the server under systemd-socket-activate; returns (process, port, log)."""
        # The server is told to bind a port that is taken: it can only start if it
        # really uses the socket it is handed.
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = support.free_port()
        log_path = os.path.join(directory, "activated.log")
        argv = [SOCKET_ACTIVATE, "-l", "127.0.0.1:%d" % port, "--fdname=uscmdrelay"]
        if self.program == "src":
            argv.append("--setenv=PYTHONPATH=" + support.SRC)
        argv += support.command(self.program) + [
            "--config-dir", directory, "--host", "127.0.0.1",
            "--port", str(taken.getsockname()[1])] + list(extra_args)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=log)
        self.addCleanup(stop_process, process)
        return process, port, log_path

    def connect_activated(self, process, port, log_path):
        """The first connection: it makes systemd-socket-activate start the server."""
        def connect():
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
            except ConnectionRefusedError:
                if process.poll() is not None:
                    raise AssertionError("systemd-socket-activate exited with %s:\n%s" % (
                        process.returncode, read_file(log_path)))
                return None
        sock = wait_until(connect, "systemd-socket-activate to listen on port %d" % port)
        self.addCleanup(sock.close)
        return sock


class LifecycleTest(ServiceTestCase):

    def test_sigterm_lets_request_in_flight_finish_refuses_new_ones_and_logs_summary(self):
        self.check_graceful_stop(signal.SIGTERM)

    def test_sigint_stops_gracefully_like_sigterm(self):
        self.check_graceful_stop(signal.SIGINT)

    def test_shutdown_timeout_kills_command_still_running_and_answers_3003(self):
        directory = self.config_dir()
        server = self.start(directory, args=["--shutdown-timeout", "1"])
        sock = self.send(server.port, "pidsleep")
        pid = int(wait_until(lambda: read_file(os.path.join(directory, "sleep.pid")),
                             "the sleep to start"))
        self.assertTrue(alive(pid))
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        reply = receive(sock)
        elapsed = time.monotonic() - started
        self.assertEqual(reply["code"], 3003, reply)
        self.assertGreaterEqual(elapsed, 0.8, "killed before --shutdown-timeout ran out")
        self.assertLess(elapsed, 10.0)
        self.assertEqual(server.process.wait(15), 0, server.log_text())
        wait_until(lambda: not alive(pid), "the killed sleep to be gone", 5)
        self.assertRegex(server.log_text(), r"stopped: 1 requests served, 1 of them errors")

    def test_sigterm_answers_a_connection_that_sent_nothing_at_once(self):
        # An idle client is not a request in flight: it must not hold the stop for
        # --request-timeout (30 s here).
        server = self.start(args=["--request-timeout", "30"])
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT)
        self.addCleanup(idle.close)
        wait_for_log(server, r"listening on")
        time.sleep(0.3)  # accepted by the loop
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        reply = receive(idle)
        self.assertEqual(reply, {"status": "error", "message": "server is shutting down",
                                 "code": 3004})
        self.assertEqual(server.process.wait(15), 0, server.log_text())
        self.assertLess(time.monotonic() - started, 10.0)

    def test_sighup_applies_new_config_to_later_requests_while_running_one_finishes(self):
        self.check_reload_applies_to_later_requests_only()

    def test_sighup_leaves_request_being_read_under_the_config_it_was_accepted_with(self):
        directory = self.config_dir()
        server = self.start(directory)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT)
        self.addCleanup(sock.close)
        whole = body("which")
        sock.sendall(whole[:10])
        time.sleep(0.5)  # the loop accepts at once; this leaves it plenty of time
        self.write_relays(directory, NEW_RELAYS)
        start = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"configuration reloaded", start)
        sock.sendall(whole[10:])
        self.assertEqual(receive(sock)["stdout"], "one\n")
        self.assertEqual(request(server.port, command="which")["stdout"], "two\n")

    def test_sighup_with_invalid_config_keeps_old_one_and_logs_configtest_error(self):
        directory = self.config_dir()
        server = self.start(directory)
        auth_path = os.path.join(directory, "auth.conf")
        good_auth = read_file(auth_path)
        good_relays = read_file(os.path.join(directory, "relays.conf"))

        def broken_relays():
            self.write_relays(directory, BROKEN_RELAYS)

        def readable_auth():
            os.chmod(auth_path, 0o644)

        def missing_auth():
            os.remove(auth_path)

        for breaks in (broken_relays, readable_auth, missing_auth):
            with self.subTest(breaks.__name__):
                breaks()
                expected = self.configtest_error(directory)
                start = len(server.log_text())
                server.process.send_signal(signal.SIGHUP)
                wait_for_log(server, r"^\S+ \S+ ERROR " + re.escape(expected) + r"( |$)",
                             start)
                self.assertEqual(request(server.port, command="which")["stdout"], "one\n")
                self.assertNotIn("configuration reloaded", server.log_text()[start:])
                support.write_config(directory, auth=good_auth, relays=good_relays)
        # Still able to reload once the files are fixed.
        self.write_relays(directory, NEW_RELAYS)
        start = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"configuration reloaded", start)
        self.assertEqual(request(server.port, command="which")["stdout"], "two\n")


class InheritedSignalsTest(ServiceTestCase):
    """A parent's SIG_IGN dispositions and signal mask survive exec: the server must undo
    what would break it."""

    def start_wrapped(self, setup, relays=RELAYS):
        server = ServerProcess(self.config_dir(relays), program=self.program,
                               wrapper=python_wrapper(setup))
        self.addCleanup(server.stop)
        return server

    def assert_stops_cleanly(self, server):
        server.process.send_signal(signal.SIGTERM)
        try:
            status = server.process.wait(20)
        except subprocess.TimeoutExpired:
            self.fail("SIGTERM did not stop the server:\n" + server.log_text())
        self.assertEqual(status, 0, server.log_text())
        self.assertNotIn("Traceback", server.log_text())
        self.assertRegex(server.log_text(), r"stopped: \d+ requests served")

    def test_sigchld_ignored_by_the_parent_commands_still_finish_and_sigterm_stops(self):
        # With SIGCHLD ignored the kernel reaps the children itself: waitpid() fails.
        server = self.start_wrapped("signal.signal(signal.SIGCHLD, signal.SIG_IGN)")
        reply = request(server.port, command="true", timeout=10)
        self.assertEqual((reply["code"], reply["exit_code"]), (0, 0), reply)
        reply = request(server.port, command="fail", timeout=10)
        self.assertEqual((reply["code"], reply["exit_code"]), (3001, 3), reply)
        self.assert_stops_cleanly(server)

    @unittest.skipUnless(os.path.isdir("/proc/self"), "needs /proc")
    def test_signals_ignored_by_the_parent_are_at_their_defaults_in_the_server_and_commands(
            self):
        # SIG_IGN survives exec (nohup, a shell's `trap '' QUIT`, a background job of a
        # script): reset at start-up, or every command would inherit it, whether it
        # starts with posix_spawn or (with a cwd) with Popen.
        ignored = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGALRM, signal.SIGTTOU,
                   signal.SIGHUP, signal.SIGPIPE)
        server = self.start_wrapped(
            "for signum in (%s,): signal.signal(signum, signal.SIG_IGN)"
            % ", ".join(str(int(signum)) for signum in ignored), relays=STATUS_RELAYS)
        # Python itself ignores SIGPIPE and SIGXFSZ; nothing else stays ignored.
        self.assertEqual(signal_mask(read_file("/proc/%d/status" % server.process.pid),
                                     "SigIgn"),
                         signal_bits(signal.SIGPIPE, signal.SIGXFSZ))
        for command in ("status", "status-in-root"):
            with self.subTest(command=command):
                reply = request(server.port, command=command, timeout=10)
                self.assertEqual(reply["code"], 0, reply)
                self.assertEqual(signal_mask(reply["stdout"], "SigIgn"), 0)
                self.assertEqual(signal_mask(reply["stdout"], "SigBlk"), 0)
        self.assert_stops_cleanly(server)

    def test_sigterm_and_sighup_blocked_by_the_parent_still_reach_the_server(self):
        server = self.start_wrapped(
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP])")
        self.assertEqual(request(server.port, command="true", timeout=10)["code"], 0)
        start = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"configuration reloaded", start)
        self.assert_stops_cleanly(server)


@unittest.skipUnless(os.path.isdir("/proc/self"), "needs /proc")
class EarlySignalTest(ServiceTestCase):
    """A signal that comes while the server is starting: SIGHUP's and SIGTERM's default
    action would end the process. To hold the server at a known point of its start, its
    stderr is a pipe the test has filled: the first log line (a config warning, written
    before the port is bound) blocks until the test reads."""

    BLOCKED_WRITING = ("pipe_write", "anon_pipe_write", "pipe_wait")

    def start_held(self):
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        os.set_blocking(write_fd, False)
        for size in (4096, 1):  # a write up to PIPE_BUF is all or nothing
            try:
                while True:
                    os.write(write_fd, b"#" * size)
            except BlockingIOError:
                pass
        os.set_blocking(write_fd, True)
        argv = support.command(self.program) + [
            "--config-dir", self.config_dir(), "--host", "127.0.0.1", "--port", "0"]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=write_fd,
                                       env=support.environment(self.program))
        finally:
            os.close(write_fd)
        self.addCleanup(stop_process, process)  # before the pipe loses its reader
        started = time.monotonic()
        chunks = []

        def log_text():
            os.set_blocking(read_fd, False)
            while True:
                try:
                    data = os.read(read_fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode("utf-8", "replace").lstrip("#")

        def held():
            if process.poll() is not None:
                raise AssertionError("exited with %s before logging" % process.returncode)
            wchan = (read_file("/proc/%d/wchan" % process.pid) or "").strip()
            if wchan in self.BLOCKED_WRITING:
                return True
            # A kernel that hides wchan: asleep, and long after the interpreter started.
            return (time.monotonic() - started > 3.0
                    and (process_state(process.pid) or ("?",))[0] == "S")
        wait_until(held, "the server to block writing its first log line")
        return process, log_text

    def wait_for(self, process, log_text, pattern):
        def seen():
            match = re.search(pattern, log_text())
            if match is None and process.poll() is not None:
                raise AssertionError("exited with %s; log:\n%s" % (process.returncode,
                                                                    log_text()))
            return match
        return wait_until(seen, repr(pattern))

    def test_sighup_while_starting_is_kept_and_the_server_serves(self):
        process, log_text = self.start_held()
        process.send_signal(signal.SIGHUP)
        port = int(self.wait_for(process, log_text, support.LISTENING).group(2))
        self.assertEqual(request(port, command="which")["stdout"], "one\n")
        # The reload asked for is done, once the server runs.
        self.wait_for(process, log_text, r"configuration reloaded")
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(20), 0, log_text())

    def test_sigterm_while_starting_stops_cleanly_with_exit_0(self):
        process, log_text = self.start_held()
        process.send_signal(signal.SIGTERM)
        self.wait_for(process, log_text, r"stopped: 0 requests served")
        self.assertEqual(process.wait(20), 0, log_text())
        self.assertNotIn("Traceback", log_text())


@unittest.skipUnless(os.path.isdir("/proc/self"), "needs /proc")
class Pid1Test(ServiceTestCase):
    """As PID 1 (a container's init) orphans become the server's children."""

    def setUp(self):
        if not unshare_works():
            self.skipTest("cannot run a process as PID 1 of a new namespace here "
                          "(unshare --pid --mount-proc needs root or user namespaces)")

    def test_as_pid_1_orphans_left_by_commands_are_reaped_and_statuses_kept(self):
        server = ServerProcess(self.config_dir(ORPHAN_RELAYS), program=self.program,
                               wrapper=[UNSHARE, "--fork", "--pid", "--mount-proc",
                                        "--kill-child"])
        self.addCleanup(server.stop)
        # The server runs under unshare; outside its namespace it has an ordinary pid.
        pid = wait_until(lambda: children(server.process.pid), "the server")[0][0]
        for _ in range(3):
            self.assertEqual(request(server.port, command="orphan")["code"], 0)
        orphans = children(pid)
        self.assertGreaterEqual(len(orphans), 3, "the sleeps were not left to the server")
        for _ in range(10):
            reply = request(server.port, command="fail")
            self.assertEqual((reply["code"], reply["exit_code"]), (3001, 3), reply)
        # The sleeps exit after 2 s; a zombie left unreaped shows as a child in state Z.
        try:
            wait_until(lambda: not children(pid), "the orphans to be reaped", 20)
        except AssertionError:
            self.fail("left unreaped: %r" % children(pid))
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(server.process.wait(20), 0, server.log_text())
        self.assertNotIn("Traceback", server.log_text())


class SourceLifecycleTest(ServiceTestCase):
    program = "src"

    def test_sigterm_lets_request_in_flight_finish_refuses_new_ones_and_logs_summary(self):
        self.check_graceful_stop(signal.SIGTERM)

    def test_sighup_applies_new_config_to_later_requests_while_running_one_finishes(self):
        self.check_reload_applies_to_later_requests_only()


class NotifyTest(ServiceTestCase):

    def test_notify_ready_reloading_ready_stopping_on_a_socket_path(self):
        self.check_notify_sequence()

    def test_notify_reaches_an_abstract_socket_named_with_at(self):
        listener, address = self.notify_socket(abstract=True)
        server = self.start(env={"NOTIFY_SOCKET": address})
        ready = self.next_notification(listener)
        self.assertEqual(ready.get("READY"), "1", ready)
        self.assertEqual(ready.get("MAINPID"), str(server.process.pid), ready)

    def test_unreachable_notify_socket_does_not_stop_the_server(self):
        directory = self.config_dir()
        server = self.start(directory, env={
            "NOTIFY_SOCKET": os.path.join(directory, "nobody-listens-here")})
        self.assertEqual(request(server.port)["code"], 0)
        self.assertEqual(server.stop(), 0)


class SourceNotifyTest(ServiceTestCase):
    program = "src"

    def test_notify_ready_reloading_ready_stopping_on_a_socket_path(self):
        self.check_notify_sequence()


@unittest.skipUnless(SOCKET_ACTIVATE, "systemd-socket-activate is not installed")
class SocketActivationTest(ServiceTestCase):

    def test_serves_the_socket_it_is_passed_and_says_host_and_port_are_ignored(self):
        directory = self.config_dir()
        process, port, log_path = self.socket_activated(directory)
        sock = self.connect_activated(process, port, log_path)
        sock.sendall(body("which"))
        self.assertEqual(receive(sock)["stdout"], "one\n")
        self.assertEqual(request(port, command="which")["stdout"], "one\n")
        log_text = read_file(log_path)
        self.assertRegex(log_text, r"(?i)socket.*passed by systemd.*--host and --port are "
                                   r"ignored")
        self.assertIn("listening on 127.0.0.1 port %d" % port, log_text)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(20), 0, read_file(log_path))

    def test_socket_activated_command_sees_neither_listen_variables_nor_the_socket(self):
        directory = self.config_dir()
        process, port, log_path = self.socket_activated(directory)
        sock = self.connect_activated(process, port, log_path)
        sock.sendall(body("report"))
        reply = receive(sock)
        self.assertEqual(reply["code"], 0, reply)
        seen = json.loads(reply["stdout"])
        for name in SERVICE_VARIABLES:
            self.assertNotIn(name, seen["environ"])
        self.assertEqual(seen["fds"], [0, 1, 2])

    def test_listen_variables_naming_another_process_are_ignored(self):
        server = self.start(env={"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()),
                                 "LISTEN_FDNAMES": "uscmdrelay"})
        self.assertNotEqual(server.port, 0)
        self.assertEqual(request(server.port, command="which")["stdout"], "one\n")
        self.assertNotIn("passed by systemd", server.log_text())


    def test_passed_descriptor_that_is_not_a_socket_is_one_line_and_exit_1(self):
        directory = self.config_dir()
        argv = support.command(self.program) + ["--config-dir", directory, "--port", "0"]
        script = 'export LISTEN_PID=$$; exec "$@" 3</dev/null'
        result = subprocess.run(["sh", "-c", script, "sh"] + argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60,
                                env=support.environment(self.program, {"LISTEN_FDS": "1"}))
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(result.stderr.splitlines()[-1], "uscmdrelay: cannot use the socket "
                         "passed by systemd: fd 3: Socket operation on non-socket")


class PassedSocketTest(ServiceTestCase):
    """A descriptor passed as systemd would ($LISTEN_FDS=1, $LISTEN_PID) that is not a
    listening TCP socket is refused at start-up, in one line."""

    def run_passing(self, sock):
        """Runs the server with `sock` as its fd 3; returns (exit status, stderr)."""
        wrapper = python_wrapper(
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')",
            str(sock.fileno()))
        argv = wrapper + support.command(self.program) + [
            "--config-dir", self.config_dir(support.QUIET_RELAYS), "--host", "127.0.0.1",
            "--port", "0"]
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=20, pass_fds=(sock.fileno(),),
                                env=support.environment(self.program))
        return result.returncode, result.stderr

    def unix_socket(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-unix-")
        self.addCleanup(shutil.rmtree, directory, True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(directory, "socket"))
        sock.listen(1)
        return sock

    def udp_socket(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return sock

    def unlistening_tcp_socket(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    def test_a_unix_datagram_or_unlistening_socket_is_refused_in_one_line(self):
        tcp_only = "; uscmdrelay listens on TCP only (ListenStream=PORT or ADDRESS:PORT)"
        for make, problem in (
                (self.unix_socket, "a Unix-domain socket" + tcp_only),
                (self.udp_socket, "a datagram (UDP) socket" + tcp_only),
                (self.unlistening_tcp_socket, "a TCP socket that is not listening (a "
                 "connection, as Accept=yes passes); uscmdrelay needs the listening "
                 "socket (Accept=no)")):
            with self.subTest(problem=problem):
                sock = make()
                self.addCleanup(sock.close)
                status, stderr = self.run_passing(sock)
                self.assertEqual(status, 1, stderr)
                self.assertEqual(stderr.splitlines(), [
                    "uscmdrelay: cannot use the socket passed by systemd: fd 3: " + problem])


class SourceSocketActivationTest(SocketActivationTest):
    program = "src"


class CommandEnvironmentTest(ServiceTestCase):

    def test_command_learns_client_cluster_command_and_key_description_never_the_key(self):
        server = self.start(env={"USCMDRELAY_TEST_INHERITED": "yes"})
        for auth_key, command, cluster, label in (
                (KEY, "report", "default", "test client"),
                (OTHER_KEY, "ops::report", "ops", "other client")):
            with self.subTest(command=command):
                environ = self.report(server.port, command, auth_key)["environ"]
                self.assertEqual(environ.get("USCMDRELAY_CLIENT"), "127.0.0.1")
                self.assertEqual(environ.get("USCMDRELAY_CLUSTER"), cluster)
                self.assertEqual(environ.get("USCMDRELAY_COMMAND"), "report")
                self.assertEqual(environ.get("USCMDRELAY_KEY"), label)
                self.assertEqual(environ.get("USCMDRELAY_TEST_INHERITED"), "yes")
                self.assertNotIn(auth_key, json.dumps(environ))

    def test_command_never_inherits_listen_or_notify_variables(self):
        directory = self.config_dir()
        server = self.start(directory, env={
            "LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "x",
            "NOTIFY_SOCKET": os.path.join(directory, "nobody-listens-here")})
        environ = self.report(server.port)["environ"]
        for name in SERVICE_VARIABLES:
            self.assertNotIn(name, environ)
        self.assertEqual(environ.get("USCMDRELAY_COMMAND"), "report")

    def test_command_never_inherits_the_client_key_variable(self):
        # `call` reads the key from USCMDRELAY_AUTH_KEY; a service environment may hold it.
        server = self.start(env={"USCMDRELAY_AUTH_KEY": OTHER_KEY})
        environ = self.report(server.port)["environ"]
        self.assertNotIn("USCMDRELAY_AUTH_KEY", environ)
        self.assertNotIn(OTHER_KEY, json.dumps(environ))

    def test_command_sees_only_file_descriptors_0_1_2(self):
        server = self.start()
        # Connections open while the command runs must not leak into it either.
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT)
        self.addCleanup(idle.close)
        seen = self.report(server.port)
        self.assertEqual(seen["fds"], [0, 1, 2])
        self.assertEqual(len(seen["listed"]), 4, seen["listed"])  # plus listdir's own

    def test_descriptors_the_server_inherited_do_not_reach_commands(self):
        # A parent (a shell script, a supervisor) may start the server with inheritable
        # descriptors open; none of them may reach a command, with or without `cwd`.
        directory = self.config_dir(RELAYS.replace(
            "missing = /nonexistent/program\n", "missing = /nonexistent/program\n"
            "reportcwd = {python} {report}\nreportcwd.cwd = /\n"))
        server = ServerProcess(directory, program=self.program, wrapper=[
            "sh", "-c", 'exec 7</dev/null 9>"$0"; exec "$@"',
            os.path.join(directory, "inherited")])
        self.addCleanup(server.stop)
        for command in ("report", "reportcwd"):
            with self.subTest(command=command):
                self.assertEqual(self.report(server.port, command)["fds"], [0, 1, 2])


class SourceCommandEnvironmentTest(CommandEnvironmentTest):
    program = "src"


class JournalTest(ServiceTestCase):

    def start_logging_to(self, log_path, journal_stream):
        directory = os.path.dirname(log_path)
        env = {} if journal_stream is None else {"JOURNAL_STREAM": journal_stream}
        server = ServerProcess(directory, program=self.program, log_path=log_path, env=env)
        self.addCleanup(server.stop)
        return server

    def test_journal_stream_gets_priority_prefixes_and_no_timestamps(self):
        directory = self.config_dir()
        log_path = os.path.join(directory, "journal.log")
        open(log_path, "wb").close()
        info = os.stat(log_path)  # ServerProcess truncates, so the inode stays
        server = self.start_logging_to(log_path, "%d:%d" % (info.st_dev, info.st_ino))
        self.assertEqual(request(server.port)["code"], 0)
        self.assertEqual(request(server.port, command="fail")["code"], 3001)
        self.write_relays(directory, BROKEN_RELAYS)
        expected = self.configtest_error(directory)
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"^<3>" + re.escape(expected) + r"( |$)")
        log_text = server.log_text()
        self.assertRegex(log_text, r"(?m)^<6>client=127\.0\.0\.1:\d+ .*"
                                   r"command=\"default::true\".* code=0 ")
        self.assertRegex(log_text, r"(?m)^<6>client=127\.0\.0\.1:\d+ .*code=3001 ")
        self.assertRegex(log_text, r"(?m)^<4>config: .*/nonexistent/program")
        self.assertRegex(log_text, r"(?m)^<6>.*listening on 127\.0\.0\.1 port %d"
                         % server.port)
        for line in log_text.splitlines():
            self.assertRegex(line, r"^<[0-7]>")
            self.assertNotRegex(line, TIMESTAMP)

    def check_plain_lines(self, log_text):
        lines = log_text.splitlines()
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^" + TIMESTAMP.pattern + r",\d{3} (INFO|WARNING|ERROR) ")
            self.assertNotRegex(line, r"<\d>")

    def test_without_journal_stream_lines_have_timestamps_and_no_prefix(self):
        server = self.start()
        self.assertEqual(request(server.port)["code"], 0)
        wait_for_log(server, r"code=0 ")
        self.check_plain_lines(server.log_text())

    def test_journal_stream_naming_another_file_is_not_the_journal(self):
        directory = self.config_dir()
        info = os.stat(os.path.join(directory, "auth.conf"))
        server = self.start_logging_to(os.path.join(directory, "plain.log"),
                                       "%d:%d" % (info.st_dev, info.st_ino))
        self.assertEqual(request(server.port)["code"], 0)
        wait_for_log(server, r"code=0 ")
        self.check_plain_lines(server.log_text())


class InitTest(ServiceTestCase):

    def init(self, directory, *extra, **kwargs):
        return run_cli(self.program, ["init", "--config-dir", directory] + list(extra),
                       **kwargs)

    def new_dir(self):
        parent = tempfile.mkdtemp(prefix="uscmdrelay-init-")
        self.addCleanup(shutil.rmtree, parent, True)
        return os.path.join(parent, "conf")

    def printed_key(self, out):
        lines = out.splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Your auth key"):
                return lines[index + 1].strip()
        self.fail("no key printed:\n" + out)

    def test_init_creates_private_dir_and_files_with_a_fresh_key_granted_default(self):
        directory = self.new_dir()
        code, out, err = self.init(directory)
        self.assertEqual(code, 0, out + err)
        auth_path = os.path.join(directory, "auth.conf")
        relays_path = os.path.join(directory, "relays.conf")
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(auth_path).st_mode), 0o600)
        self.assertTrue(os.path.isfile(relays_path))
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read(auth_path)
        self.assertEqual(len(parser.sections()), 1)
        key = parser.sections()[0]
        self.assertRegex(key, r"^[A-Za-z0-9_-]{43,}$")
        self.assertEqual(parser[key]["auth_clusters"].strip(), "default")
        relays = configparser.ConfigParser(interpolation=None)
        relays.read(relays_path)
        self.assertTrue({"uptime", "date", "echo"} <= set(relays["default"]), relays_path)
        self.assertEqual(self.printed_key(out), key)
        self.assertIn(auth_path, out)
        self.assertIn(relays_path, out)
        code, out, err = run_cli(self.program, ["--config-dir", directory, "configtest"])
        self.assertEqual(code, 0, out + err)
        self.assertIn("Config OK", out)
        self.assertNotIn("warning", out)
        # A second init makes another key.
        other = self.new_dir()
        self.assertEqual(self.init(other)[0], 0)
        self.assertNotEqual(read_file(os.path.join(other, "auth.conf")),
                            read_file(auth_path))

    def test_init_never_overwrites_and_exits_1_with_a_message(self):
        directory = self.new_dir()
        self.assertEqual(self.init(directory)[0], 0)
        names = ("auth.conf", "relays.conf")
        before = dict((name, read_bytes(os.path.join(directory, name))) for name in names)
        code, out, err = self.init(directory)
        self.assertEqual(code, 1, out + err)
        self.assertIn("already exists", err)
        self.assertNotIn("Traceback", err)
        for name in names:
            self.assertEqual(read_bytes(os.path.join(directory, name)), before[name])

    def test_init_with_only_relays_conf_present_writes_nothing(self):
        directory = self.new_dir()
        os.mkdir(directory)
        relays_path = os.path.join(directory, "relays.conf")
        with open(relays_path, "w") as handle:
            handle.write("[default]\nmine = /bin/true\n")
        code, out, err = self.init(directory)
        self.assertEqual(code, 1, out + err)
        self.assertIn(relays_path, err)
        self.assertEqual(read_file(relays_path), "[default]\nmine = /bin/true\n")
        self.assertFalse(os.path.exists(os.path.join(directory, "auth.conf")))

    @unittest.skipUnless(shutil.which("nc") and shutil.which("jq"), "needs nc and jq")
    def test_printed_nc_jq_example_works_against_a_server_on_that_config(self):
        directory = self.new_dir()
        code, out, err = self.init(directory)
        self.assertEqual(code, 0, out + err)
        lines = [line.strip() for line in out.splitlines() if "| nc " in line]
        self.assertEqual(len(lines), 1, out)
        self.assertIn("nc 127.0.0.1 7777 | jq", lines[0])
        server = self.start(directory)
        line = lines[0].replace("nc 127.0.0.1 7777 |", "nc 127.0.0.1 %d |" % server.port)
        shell = subprocess.Popen(["sh", "-c", line], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True)
        try:
            reply_text, errors = shell.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            shell.kill()
            shell.communicate()
            raise
        self.assertEqual(shell.returncode, 0, errors)
        reply = json.loads(reply_text)
        self.assertEqual((reply["status"], reply["code"]), ("success", 0), reply)
        self.assertIn("load average", reply["stdout"])

    def test_init_hashed_keeps_only_the_digest_and_the_printed_key_works(self):
        directory = self.new_dir()
        code, out, err = self.init(directory, "--hashed")
        self.assertEqual(code, 0, out + err)
        key = self.printed_key(out)
        self.assertRegex(key, r"^[A-Za-z0-9_-]{43,}$")
        self.assertNotIn(key, read_file(os.path.join(directory, "auth.conf")))
        server = self.start(directory)
        self.assertEqual(request(server.port, auth_key=key, command="echo",
                                 arguments=["hi"])["stdout"], "hi\n")

    def test_init_help_names_both_default_directories(self):
        code, out, err = run_cli(self.program, ["init", "--help"])
        self.assertEqual(code, 0, err)
        text = " ".join(out.split())
        self.assertIn("/etc/uscmdrelay as root", text)
        self.assertIn("~/.config/uscmdrelay", text)

    @unittest.skipIf(os.geteuid() == 0, "as root the default is /etc/uscmdrelay")
    def test_init_without_config_dir_writes_to_home_config_for_a_normal_user(self):
        home = tempfile.mkdtemp(prefix="uscmdrelay-home-")
        self.addCleanup(shutil.rmtree, home, True)
        code, out, err = run_cli(self.program, ["init"], env={"HOME": home})
        self.assertEqual(code, 0, out + err)
        directory = os.path.join(home, ".config", "uscmdrelay")
        self.assertTrue(os.path.isfile(os.path.join(directory, "auth.conf")))
        self.assertTrue(os.path.isfile(os.path.join(directory, "relays.conf")))


class SourceInitTest(InitTest):
    program = "src"


@unittest.skipUnless(SYSTEMD_ANALYZE, "systemd-analyze is not installed")
class SampleUnitsTest(unittest.TestCase):

    def test_sample_service_and_socket_pass_systemd_analyze_verify(self):
        if not os.access("/usr/bin/python3", os.X_OK):
            self.skipTest("the sample's ExecStart needs /usr/bin/python3")
        directory = tempfile.mkdtemp(prefix="uscmdrelay-units-")
        self.addCleanup(shutil.rmtree, directory, True)
        units = []
        for kind in ("service", "socket"):
            unit = os.path.join(directory, "uscmdrelay." + kind)
            shutil.copy(os.path.join(SAMPLES, "uscmdrelay.sample." + kind), unit)
            units.append(unit)
        process = subprocess.Popen([SYSTEMD_ANALYZE, "verify", "--man=no"] + units,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True)
        output = process.communicate(timeout=60)[0]
        self.assertEqual(process.returncode, 0, output)
        # verify exits 0 even for unknown keys and bad values; it only warns.
        ours = [line for line in output.splitlines() if "uscmdrelay" in line]
        self.assertEqual(ours, [], output)


if __name__ == "__main__":
    unittest.main()
