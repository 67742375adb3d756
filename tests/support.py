"""Shared test helpers: config directories, a real server in a subprocess, raw requests.

Every server a test starts runs as a child process on an ephemeral 127.0.0.1 port and is
stopped by its PID in a cleanup, whatever the test's outcome.
"""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PYZ = os.path.join(ROOT, "dist", "uscmdrelay.pyz")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
START_TIMEOUT = 20.0
REPLY_TIMEOUT = 30.0

DEFAULT_AUTH = """\
[{key}]
description = test client
auth_clusters = default, ops

[{other}]
description = other client
auth_clusters = ops
""".format(key=KEY, other=OTHER_KEY)

DEFAULT_RELAYS = """\
[default]
true = /bin/true
echo = /bin/echo
printf = printf %s|
date = date +%Y-%m-%d
fail = sh -c "echo oops >&2; exit 3"
sleep = /bin/sleep
missing = /nonexistent/program

[ops]
uptime = uptime

[unused]
true = /bin/true
"""

# No command missing from PATH, none taking unguarded arguments: a server using it logs
# no warning at start-up, so its stderr holds nothing but what a failure prints.
QUIET_RELAYS = """\
[default]
true = /bin/true
true.max_args = 0

[ops]
true = /bin/true
true.max_args = 0
"""

LISTENING = re.compile(r"listening on (\S+) port (\d+)")


def write_config(directory, auth=DEFAULT_AUTH, relays=DEFAULT_RELAYS):
    """Writes auth.conf (mode 0600) and relays.conf into `directory`; returns it."""
    if auth is not None:
        path = os.path.join(directory, "auth.conf")
        with open(path, "w") as handle:
            handle.write(auth)
        os.chmod(path, 0o600)
    if relays is not None:
        path = os.path.join(directory, "relays.conf")
        with open(path, "w") as handle:
            handle.write(relays)
        os.chmod(path, 0o644)  # whatever the umask: group-writable would be refused
    return directory


def make_config_dir(test, **kwargs):
    """A fresh temporary config dir for `test` (removed in its cleanup)."""
    directory = tempfile.mkdtemp(prefix="uscmdrelay-test-")
    test.addCleanup(shutil.rmtree, directory, True)
    return write_config(directory, **kwargs)


def command(program="pyz", python=None):
    """The argv prefix that runs uscmdrelay: the built .pyz or the source tree."""
    python = python or sys.executable
    if program == "pyz":
        return [python, PYZ]
    return [python, "-m", "uscmdrelay"]


def environment(program="pyz", extra=None):
    env = dict(os.environ)
    if program == "src":
        env["PYTHONPATH"] = SRC
    env.update(extra or {})
    return env


class ServerProcess(object):
    """A real uscmdrelay server in a subprocess; `port` is the port it bound."""

    def __init__(self, config_dir, args=(), program="pyz", log_path=None, env=None,
                 wrapper=()):
        self.log_path = log_path or os.path.join(config_dir, "server.log")
        self._log = open(self.log_path, "wb")
        # `wrapper` goes before the interpreter, e.g. a shell that lowers a ulimit first.
        argv = list(wrapper) + command(program) + [
            "--config-dir", config_dir, "--host", "127.0.0.1", "--port", "0"] + list(args)
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=self._log,
                                        env=environment(program, env))
        self.host = "127.0.0.1"
        self.port = self._wait_for_port()

    def _wait_for_port(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_text())
            if match:
                return int(match.group(2))
            if self.process.poll() is not None:
                raise AssertionError("server exited with %s:\n%s"
                                     % (self.process.returncode, self.log_text()))
            time.sleep(0.02)
        self.stop()
        raise AssertionError("server did not start:\n%s" % self.log_text())

    def log_text(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def stop(self, signum=signal.SIGTERM, timeout=20.0):
        """Stops the server by PID; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def start_server(test, config_dir=None, args=(), program="pyz", env=None):
    """Starts a server for `test` and stops it in the test's cleanup."""
    if config_dir is None:
        config_dir = make_config_dir(test)
    server = ServerProcess(config_dir, args=args, program=program, env=env)
    test.addCleanup(server.stop)
    return server


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound, then closed)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def exchange(port, payload, host="127.0.0.1", half_close=True, timeout=REPLY_TIMEOUT):
    """Sends raw bytes, optionally half-closes, and returns every byte received."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def read_until_closed(sock):
    """Every byte the peer sends until it closes the connection."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_until_gone(sock, limit_seconds=15.0):
    """Every byte until the peer closes or resets the connection; bounded in time."""
    sock.settimeout(limit_seconds)
    chunks = []
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def request(port, auth_key=KEY, command="true", arguments=None, **kwargs):
    """Sends one request object and returns the decoded reply."""
    body = {"auth_key": auth_key, "command": command}
    if arguments is not None:
        body["arguments"] = arguments
    return decode_reply(exchange(port, (json.dumps(body) + "\n").encode("utf-8"), **kwargs))


def decode_reply(data):
    """Checks a reply is one JSON line and returns the object."""
    text = data.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, "not one line: %r" % text
    return json.loads(text)


@contextlib.contextmanager
def quiet_stderr():
    """Swallows what the code under test writes to sys.stderr (argparse's usage errors)."""
    saved = sys.stderr
    sys.stderr = io.StringIO()
    try:
        yield
    finally:
        sys.stderr = saved


def stop_process(process, timeout=20.0):
    """Stops a child by PID: SIGTERM, then SIGKILL if it is still there after `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_class_server(cls, auth=DEFAULT_AUTH, relays=DEFAULT_RELAYS, args=()):
    """For setUpClass: one server in a fresh config dir for the whole class, as
    `cls.server` / `cls.config_dir`; `stop_class_server` undoes it."""
    cls.config_dir = tempfile.mkdtemp(prefix="uscmdrelay-test-")
    write_config(cls.config_dir, auth=auth, relays=relays)
    try:
        cls.server = ServerProcess(cls.config_dir, args=args)
    except Exception:
        shutil.rmtree(cls.config_dir, True)
        raise


def stop_class_server(cls):
    """For tearDownClass: stops `cls.server` by PID and removes its config dir."""
    try:
        cls.server.stop()
    finally:
        shutil.rmtree(cls.config_dir, True)


def run_pipeline(test, pipeline, env, timeout):
    """Runs `pipeline` with sh -c in its own session; returns its stdout. Fails `test`
    when it fails or does not finish within `timeout` seconds."""
    process = subprocess.Popen(["sh", "-c", pipeline], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, start_new_session=True, env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        test.fail("%r did not finish within %g s" % (pipeline, timeout))
    test.assertEqual(process.returncode, 0, "%r failed: %s" % (pipeline, err))
    return out
