"""The Ansible module uscmdrelay_call and the fan-out playbooks (samples/ansible/).

The module's logic (argument checks, the request, reply parsing, the task result) is
imported from its file and tested on every interpreter, without Ansible, against fake
servers and real relays. The playbooks run for real with ansible-playbook against several
real relays on 127.0.0.1, one inventory host each; like tests/test_ansible.py, that part
is skipped when ansible-playbook is absent and runs under the interpreter matching
ansible-playbook's only.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests import certs, support
from tests.support import KEY, OTHER_KEY, ServerProcess, start_server
from tests.test_ansible import ansible_playbook_or_skip, run_ansible_command

SAMPLES = os.path.join(support.ROOT, "samples", "ansible")
LIBRARY = os.path.join(SAMPLES, "roles", "uscmdrelay", "library")
MODULE_PATH = os.path.join(LIBRARY, "uscmdrelay_call.py")
RELAY_CALL = os.path.join(SAMPLES, "relay-call.yml")
RELAY_ROLLING = os.path.join(SAMPLES, "relay-rolling.yml")
PLAYBOOK_TIMEOUT = 120.0
WRONG_KEY = "wrong-key-fedcba9876543210"


def _load_module():
    spec = importlib.util.spec_from_file_location("uscmdrelay_call", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


call = _load_module()


def params(**overrides):
    """The module's parameters for a call to 127.0.0.1 with the test key."""
    values = {"host": "127.0.0.1", "port": 7777, "command": "echo", "auth_key": KEY,
              "timeout": 30.0}
    values.update(overrides)
    return call.with_defaults(values)


class FakeRelay(object):
    """A one-connection server on 127.0.0.1 that reads the request line, then does
    `behaviour(conn)`; `.request` holds the bytes it read."""

    def __init__(self, test, behaviour, read_request=True):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.request = b""
        self.behaviour = behaviour
        self.read_request = read_request
        self.thread = threading.Thread(target=self._serve)
        self.thread.daemon = True
        self.thread.start()
        test.addCleanup(self.close)

    def _serve(self):
        self.listener.settimeout(30)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            try:
                while self.read_request and not self.request.endswith(b"\n"):
                    data = conn.recv(65536)
                    if not data:
                        break
                    self.request += data
                self.behaviour(conn)
            except OSError:
                pass

    def close(self):
        self.listener.close()
        self.thread.join(30)


def replying(data):
    return lambda conn: conn.sendall(data)


def silent(conn):
    time.sleep(1.5)  # past the 0.5 s timeout the tests give


# -- the module's logic, no Ansible, no relay ---------------------------------------------

class ParamsTest(unittest.TestCase):

    def test_defaults_are_those_documented(self):
        values = call.with_defaults({"host": "h", "command": "c", "auth_key": "k"})
        self.assertEqual((values["port"], values["timeout"], values["arguments"],
                          values["tls"], values["fail_on_error"], values["check_mode_safe"]),
                         (7777, 60.0, [], False, True, False))
        call.check_params(values)

    def test_bad_parameters_are_refused_naming_the_option(self):
        cases = [
            ({"port": 0}, "port: 0 is not a port number (1 to 65535)"),
            ({"port": 65536}, "port: 65536 is not a port number (1 to 65535)"),
            ({"port": True}, "port: True is not a port number (1 to 65535)"),
            ({"port": "7777"}, "port: '7777' is not a port number (1 to 65535)"),
            ({"timeout": 0}, "timeout: 0 is not a number of seconds (more than 0, at "
                             "most 604800)"),
            ({"timeout": -1.0}, "timeout: -1.0 is not"),
            ({"timeout": float("nan")}, "timeout: nan is not"),
            ({"timeout": float("inf")}, "timeout: inf is not"),
            ({"timeout": 604801}, "timeout: 604801 is not"),
            ({"host": ""}, "host: must not be empty"),
            ({"command": ""}, "command: must not be empty"),
            ({"arguments": "a b"}, "arguments: must be a list of strings"),
            ({"arguments": ["a", 1]}, "arguments: must be a list of strings"),
            ({"auth_key_file": "/k"}, "parameters are mutually exclusive: "
                                      "auth_key|auth_key_file"),
            ({"auth_key": None}, "one of the following is required: auth_key, "
                                 "auth_key_file"),
            ({"tls_key": "/client.key"}, "tls_key: needs tls_cert"),
        ]
        for overrides, message in cases:
            with self.subTest(overrides=overrides):
                with self.assertRaises(call.CallError) as caught:
                    call.check_params(params(**overrides))
                self.assertTrue(str(caught.exception).startswith(message),
                                str(caught.exception))
                self.assertIsNone(caught.exception.code)

    def test_bad_parameters_fail_the_task_without_connecting(self):
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        result = call.run(params(port=listener.getsockname()[1], timeout=0))
        self.assertTrue(result["failed"])
        self.assertIn("timeout: 0 is not", result["msg"])
        listener.settimeout(0.2)
        self.assertRaises(socket.timeout, listener.accept)

    def test_any_tls_option_means_tls(self):
        self.assertFalse(call.uses_tls(params()))
        self.assertTrue(call.uses_tls(params(tls=True)))
        for name in call.TLS_OPTIONS:
            with self.subTest(option=name):
                self.assertTrue(call.uses_tls(params(**{name: "x"})))

    def test_key_file_is_read_and_stripped(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-module-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "key")
        with open(path, "w") as handle:
            handle.write("  %s\n\n" % KEY)
        self.assertEqual(call.read_key(params(auth_key=None, auth_key_file=path)), KEY)
        self.assertEqual(call.read_key(params()), KEY)

    def test_unusable_key_file_is_named_and_its_content_never_shown(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-module-")
        self.addCleanup(shutil.rmtree, directory, True)
        empty = os.path.join(directory, "empty")
        open(empty, "w").close()
        binary = os.path.join(directory, "binary")
        with open(binary, "wb") as handle:
            handle.write(b"\xff" + KEY.encode("ascii"))
        missing = os.path.join(directory, "missing")
        cases = [(empty, "auth_key_file: %s is empty" % empty),
                 (binary, "auth_key_file: %s is not UTF-8 text" % binary),
                 (missing, "auth_key_file: cannot read %s: No such file or directory"
                  % missing)]
        for path, message in cases:
            with self.subTest(path=path):
                result = call.run(params(auth_key=None, auth_key_file=path))
                self.assertEqual((result["failed"], result["msg"]), (True, message))
                self.assertNotIn(KEY, json.dumps(result))


class RequestAndReplyTest(unittest.TestCase):

    def test_request_is_one_json_line_with_the_three_fields(self):
        data = call.build_request(KEY, "ops::x", ["a b", "", "é;$(x)"])
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(json.loads(data.decode("utf-8")),
                         {"auth_key": KEY, "command": "ops::x",
                          "arguments": ["a b", "", "é;$(x)"]})
        # ::list takes no arguments: none are sent when there are none.
        self.assertEqual(json.loads(call.build_request(KEY, "::list", []).decode("utf-8")),
                         {"auth_key": KEY, "command": "::list"})

    def test_good_replies_parse_with_or_without_newline_and_ignore_what_follows(self):
        reply = {"status": "success", "message": "hi", "code": 0, "exit_code": 0,
                 "stdout": "hi\n", "stderr": "", "duration_ms": 3, "truncated": False}
        line = json.dumps(reply).encode("utf-8")
        for raw in (line + b"\n", line, line + b"\nmore garbage"):
            with self.subTest(raw=raw[-20:]):
                self.assertEqual(call.parse_reply(raw, "h", 1), reply)

    def test_huge_reply_parses(self):
        stdout = "x" * (8 * 1024 * 1024)
        raw = json.dumps({"code": 0, "exit_code": 0, "stdout": stdout}).encode() + b"\n"
        result = call.result_from_reply(call.parse_reply(raw, "h", 1))
        self.assertEqual(len(result["stdout"]), len(stdout))

    def test_malformed_replies_are_no_valid_reply_naming_host_port_and_size(self):
        cases = [b"", b"\n", b"not json\n", b"[1, 2]\n", b'"text"\n', b"{}\n",
                 b'{"code": "0"}\n', b'{"code": true}\n', b'{"code": 1.5}\n',
                 b'{"code": null}\n', b'{"code": 0\n', b'\xff{"code": 0}\n',
                 b"[" * 100000 + b"\n"]
        for raw in cases:
            with self.subTest(raw=raw[:20]):
                with self.assertRaises(call.CallError) as caught:
                    call.parse_reply(raw, "relay.example", 7777)
                self.assertEqual(str(caught.exception),
                                 "relay.example port 7777 sent no valid reply (%d bytes)"
                                 % len(raw))
                self.assertIsNone(caught.exception.code)


class ResultTest(unittest.TestCase):

    def test_success_is_ok_and_changed_with_every_field(self):
        result = call.result_from_reply({
            "status": "success", "message": "a\nb", "code": 0, "exit_code": 0,
            "stdout": "a\nb\n", "stderr": "warn\n", "duration_ms": 7, "truncated": False})
        self.assertEqual(result, {
            "changed": True, "failed": False, "code": 0, "rc": 0, "stdout": "a\nb\n",
            "stderr": "warn\n", "stdout_lines": ["a", "b"], "stderr_lines": ["warn"],
            "msg": "a\nb", "duration_ms": 7, "truncated": False})

    def test_failed_command_fails_with_its_status_message_and_code(self):
        reply = {"status": "error", "message": "oops", "code": 3001, "exit_code": 3,
                 "stdout": "", "stderr": "oops\n", "duration_ms": 2, "truncated": True}
        result = call.result_from_reply(reply)
        self.assertEqual((result["failed"], result["changed"], result["code"], result["rc"],
                          result["msg"], result["truncated"]),
                         (True, True, 3001, 3, "exit status 3: oops (code 3001)", True))
        reply["message"] = ""
        self.assertEqual(call.result_from_reply(reply)["msg"], "exit status 3 (code 3001)")

    def test_rc_keeps_the_relays_negative_signal_numbers(self):
        reply = {"status": "error", "message": "killed", "code": 3001, "exit_code": -9}
        result = call.result_from_reply(reply)
        self.assertEqual((result["rc"], result["msg"]),
                         (-9, "killed by signal 9: killed (code 3001)"))
        reply = {"status": "error", "message": "timed out after 1 s", "code": 3003,
                 "exit_code": -15, "stdout": "so far\n", "duration_ms": 1000}
        result = call.result_from_reply(reply)
        self.assertEqual((result["failed"], result["changed"], result["rc"], result["msg"],
                          result["stdout"]),
                         (True, True, -15, "timed out after 1 s (code 3003)", "so far\n"))

    def test_refused_requests_fail_unchanged_with_the_relays_message_and_code(self):
        for code, message in ((1001, "authentication failed"), (2004, "unknown command"),
                              (3002, "cannot start: No such file"), (3004, "busy"),
                              (9999, "internal server error")):
            with self.subTest(code=code):
                result = call.result_from_reply({"status": "error", "message": message,
                                                 "code": code})
                self.assertEqual((result["failed"], result["changed"], result["code"],
                                  result["rc"], result["msg"]),
                                 (True, False, code, None, "%s (code %d)" % (message, code)))

    def test_without_fail_on_error_a_relay_error_is_a_result_not_a_failure(self):
        result = call.result_from_reply({"status": "error", "message": "oops",
                                         "code": 3001, "exit_code": 3}, fail_on_error=False)
        self.assertEqual((result["failed"], result["changed"], result["code"], result["rc"]),
                         (False, True, 3001, 3))

    def test_list_reply_puts_the_commands_in_stdout_as_json(self):
        commands = [{"command": "echo", "description": None, "min_args": None,
                     "max_args": None}]
        result = call.result_from_reply({"status": "success", "message": "1 commands",
                                         "code": 0, "commands": commands})
        self.assertEqual((result["changed"], json.loads(result["stdout"])), (False, commands))

    def test_odd_field_types_in_a_reply_do_not_break_the_result(self):
        result = call.result_from_reply({"code": 0, "exit_code": "0", "stdout": None,
                                         "stderr": 5, "duration_ms": True, "truncated": 1})
        self.assertEqual((result["rc"], result["stdout"], result["stderr"],
                          result["duration_ms"], result["truncated"], result["changed"]),
                         (None, "", "", None, False, False))


class CheckModeTest(unittest.TestCase):

    def listener(self):
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock

    def test_check_mode_runs_nothing_and_says_so(self):
        listener = self.listener()
        result = call.run(params(port=listener.getsockname()[1], command="web::restart"),
                          check_mode=True)
        self.assertEqual(result, {
            "changed": False, "failed": False, "skipped": True, "code": None, "rc": None,
            "stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": [],
            "msg": "check mode: web::restart was not run (check_mode_safe: false)",
            "duration_ms": None, "truncated": False})
        listener.settimeout(0.2)
        self.assertRaises(socket.timeout, listener.accept)  # no connection at all

    def test_check_mode_safe_runs_the_command(self):
        self.assertIsNone(call.check_mode_result(params(check_mode_safe=True)))
        relay = FakeRelay(self, replying(b'{"code": 0, "exit_code": 0, "stdout": "x"}\n'))
        result = call.run(params(port=relay.port, check_mode_safe=True), check_mode=True)
        self.assertEqual((result["failed"], result["changed"], result["stdout"]),
                         (False, True, "x"))

    def test_check_mode_still_checks_parameters_and_the_key_file(self):
        result = call.run(params(auth_key=None, auth_key_file="/nonexistent/key"),
                          check_mode=True)
        self.assertTrue(result["failed"])
        self.assertIn("auth_key_file: cannot read /nonexistent/key", result["msg"])


class ExchangeTest(unittest.TestCase):
    """The module's exchange() against fake servers on 127.0.0.1."""

    def test_request_reaches_the_server_and_the_reply_line_comes_back(self):
        relay = FakeRelay(self, replying(b'{"code": 0}\nignored'))
        raw = call.exchange("127.0.0.1", relay.port, call.build_request(KEY, "x", ["y"]), 10)
        self.assertEqual(raw[:12], b'{"code": 0}\n')
        relay.thread.join(10)
        self.assertEqual(json.loads(relay.request.decode("utf-8")),
                         {"auth_key": KEY, "command": "x", "arguments": ["y"]})

    def test_connection_refused_names_host_and_port(self):
        port = support.free_port()
        result = call.run(params(port=port))
        self.assertEqual((result["failed"], result["code"], result["changed"], result["msg"]),
                         (True, None, False, "cannot connect to 127.0.0.1 port %d: "
                                             "Connection refused" % port))

    def test_silent_server_times_out_naming_host_port_and_timeout(self):
        relay = FakeRelay(self, silent)
        started = time.monotonic()
        result = call.run(params(port=relay.port, timeout=0.5))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(result["msg"], "no reply from 127.0.0.1 port %d within 0.5 s "
                                        "(timeout)" % relay.port)

    def test_server_closing_without_reply_is_no_valid_reply(self):
        relay = FakeRelay(self, lambda conn: None)
        result = call.run(params(port=relay.port))
        self.assertEqual(result["msg"], "127.0.0.1 port %d sent no valid reply (0 bytes)"
                         % relay.port)

    def test_endless_reply_is_cut_at_the_limit(self):
        def endless(conn):
            chunk = b"x" * 65536
            for _ in range(64):
                conn.sendall(chunk)
        relay = FakeRelay(self, endless)
        with self.assertRaises(call.CallError) as caught:
            call.exchange("127.0.0.1", relay.port, b"{}\n", 10, max_reply_bytes=100000)
        self.assertEqual(str(caught.exception), "127.0.0.1 port %d sent a reply larger "
                                                "than 100000 bytes" % relay.port)

    def test_tls_to_a_plain_server_fails_naming_host_and_port(self):
        # It answers at once: a TLS client's hello has no newline to wait for.
        relay = FakeRelay(self, replying(b'{"code": 0}\n'), read_request=False)
        result = call.run(params(port=relay.port, tls=True))
        self.assertTrue(result["failed"])
        self.assertTrue(result["msg"].startswith("TLS with 127.0.0.1 port %d failed: "
                                                 % relay.port), result["msg"])

    def test_unreadable_tls_file_is_named(self):
        result = call.run(params(tls_ca="/nonexistent/ca.pem"))
        self.assertEqual(result["msg"], "tls_ca: cannot read /nonexistent/ca.pem: "
                                        "No such file or directory")

    def test_key_appears_in_no_result(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-module-")
        self.addCleanup(shutil.rmtree, directory, True)
        key_file = os.path.join(directory, "key")
        with open(key_file, "w") as handle:
            handle.write(KEY)
        relays = [FakeRelay(self, replying(b"no json " + KEY.encode() + b"\n")),
                  FakeRelay(self, silent),
                  FakeRelay(self, replying(b'{"code": 1001, "message": "auth"}\n')),
                  FakeRelay(self, replying(b'{"code": 0, "stdout": "ok"}\n'))]
        cases = [params(port=relay.port, timeout=0.5) for relay in relays] + [
            params(port=support.free_port()), params(port=0), params(tls_ca="/nonexistent"),
            params(auth_key=None, auth_key_file=key_file, port=support.free_port()),
            params(command="x"), ]
        for values in cases:
            for check_mode in (False, True):
                result = call.run(values, check_mode=check_mode)
                self.assertNotIn(KEY, json.dumps(result))
                self.assertNotIn(KEY[:12], result["msg"])


# -- the module against real relays --------------------------------------------------------

class RealRelayTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.fixture = unittest.TestCase("run")
        cls.server = start_server(cls.fixture)

    @classmethod
    def tearDownClass(cls):
        cls.fixture.doCleanups()

    def run_module(self, **overrides):
        return call.run(params(port=self.server.port, **overrides))

    def test_exchange_with_a_real_relay(self):
        raw = call.exchange("127.0.0.1", self.server.port,
                            call.build_request(KEY, "echo", ["a b", "$HOME"]), 30)
        reply = call.parse_reply(raw, "127.0.0.1", self.server.port)
        self.assertTrue(raw.endswith(b"\n"))
        self.assertEqual((reply["code"], reply["exit_code"], reply["stdout"]),
                         (0, 0, "a b $HOME\n"))

    def test_command_output_and_changed(self):
        result = self.run_module(arguments=["a b", "$HOME"])
        self.assertEqual((result["failed"], result["changed"], result["code"], result["rc"],
                          result["stdout"], result["stdout_lines"], result["msg"]),
                         (False, True, 0, 0, "a b $HOME\n", ["a b $HOME"], "a b $HOME"))
        self.assertIsInstance(result["duration_ms"], (int, float))

    def test_failing_command(self):
        result = self.run_module(command="fail")
        self.assertEqual((result["failed"], result["changed"], result["code"], result["rc"],
                          result["stderr"], result["msg"]),
                         (True, True, 3001, 3, "oops\n", "exit status 3: oops (code 3001)"))

    def test_relay_refusals(self):
        cases = [({"auth_key": WRONG_KEY}, 1001, "authentication failed (code 1001)"),
                 ({"command": "nosuch"}, 2004, "unknown command"),
                 ({"command": "unused::true"}, 1002, "this key may not use cluster 'unused'"),
                 ({"command": "missing"}, 3002, "")]
        for overrides, code, message in cases:
            with self.subTest(overrides=overrides):
                result = self.run_module(**overrides)
                self.assertEqual((result["failed"], result["changed"], result["code"],
                                  result["rc"]), (True, False, code, None), result)
                self.assertIn(message, result["msg"])
                self.assertTrue(result["msg"].endswith("(code %d)" % code), result["msg"])
                self.assertNotIn(WRONG_KEY, json.dumps(result))

    def test_list(self):
        result = self.run_module(command="::list")
        self.assertEqual(result["code"], 0, result)
        names = [entry["command"] for entry in json.loads(result["stdout"])]
        self.assertIn("default::echo", names)
        self.assertIn("ops::uptime", names)

    def test_stopped_relay_is_connection_refused(self):
        fixture = unittest.TestCase("run")
        server = start_server(fixture)
        port = server.port
        fixture.doCleanups()
        result = call.run(params(port=port))
        self.assertEqual(result["msg"], "cannot connect to 127.0.0.1 port %d: "
                                        "Connection refused" % port)


class RealTLSRelayTest(unittest.TestCase):

    def setUp(self):
        certs.require_openssl(self)
        self.pki = certs.certificates()
        self.server = start_server(self, args=[
            "--tls-cert", self.pki.server_cert, "--tls-key", self.pki.server_key,
            "--tls-client-ca", self.pki.ca])

    def test_mutual_tls_call(self):
        result = call.run(params(port=self.server.port, command="echo", arguments=["t"],
                                 tls_ca=self.pki.ca, tls_cert=self.pki.client_cert,
                                 tls_key=self.pki.client_key))
        self.assertEqual((result["failed"], result["stdout"]), (False, "t\n"), result)

    def test_unknown_server_certificate_fails_naming_host_and_port(self):
        result = call.run(params(port=self.server.port, tls_ca=self.pki.other_ca,
                                 tls_cert=self.pki.client_cert,
                                 tls_key=self.pki.client_key))
        self.assertEqual(result["msg"], "TLS with 127.0.0.1 port %d failed: "
                                        "CERTIFICATE_VERIFY_FAILED" % self.server.port)


# -- the README's shell idiom: xargs -P over a hosts file ------------------------------------

XARGS_AUTH = "[{key}]\ndescription = xargs\nauth_clusters = backup\n".format(key=KEY)
XARGS_RELAYS = "[backup]\nstatus = {command}\nstatus.max_args = 0\n"


class ManyHostsShellTest(unittest.TestCase):
    """README.md "Many hosts": the `xargs -P` block, run in bash as written (the port
    aside) over relays on 127.0.0.2 and 127.0.0.3, and none on 127.0.0.4."""

    def setUp(self):
        for program in ("bash", "sh", "xargs", "tail"):
            if shutil.which(program) is None:
                self.skipTest("%s is not installed" % program)
        self.work = tempfile.mkdtemp(prefix="uscmdrelay-xargs-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.port = support.free_port()
        self.servers = {}
        for address, command in (("127.0.0.2", "echo active"),
                                 ("127.0.0.3", 'sh -c "echo inactive; exit 3"')):
            directory = os.path.join(self.work, address)
            os.mkdir(directory)
            support.write_config(directory, auth=XARGS_AUTH,
                                 relays=XARGS_RELAYS.format(command=command))
            try:
                server = ServerProcess(directory, args=["--host", address,
                                                        "--port", str(self.port)])
            except AssertionError as error:
                self.skipTest("cannot start a relay on %s: %s" % (address, error))
            self.addCleanup(server.stop)
            self.servers[address] = server
        bin_dir = os.path.join(self.work, "bin")
        os.mkdir(bin_dir)
        os.symlink(support.PYZ, os.path.join(bin_dir, "uscmdrelay"))
        os.symlink(sys.executable, os.path.join(bin_dir, "python3"))
        self.env = dict(os.environ, USCMDRELAY_AUTH_KEY=KEY,
                        PATH=bin_dir + os.pathsep + os.environ.get("PATH", os.defpath))

    def run_bash(self, script, hosts):
        with open(os.path.join(self.work, "hosts.txt"), "w") as handle:
            handle.write("".join(host + "\n" for host in hosts))
        process = subprocess.Popen(["bash", "-c", script], cwd=self.work, env=self.env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, universal_newlines=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=PLAYBOOK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("bash ran past %g s:\n%s" % (PLAYBOOK_TIMEOUT,
                                                              process.communicate()))
        return process.returncode, stdout, stderr

    def calls(self, address):
        return self.servers[address].log_text().count('command="backup::status"')

    def test_readme_idiom_calls_every_host_and_exits_123_naming_each_failure(self):
        from tests.test_readme import README_PORT, readme_blocks
        blocks = readme_blocks().get("many-hosts-xargs", [])
        self.assertEqual(len(blocks), 1, "README.md needs one block marked "
                                         "'<!-- test: many-hosts-xargs -->'")
        self.assertIn(README_PORT, blocks[0])
        hosts = ["127.0.0.4", "127.0.0.2", "127.0.0.3"]  # the refused one first
        returncode, stdout, stderr = self.run_bash(
            blocks[0].replace(README_PORT, str(self.port)), hosts)
        context = "stdout:\n%s\nstderr:\n%s" % (stdout, stderr)
        self.assertEqual((returncode, stdout), (0, "xargs exit status: 123\n"), context)
        self.assertEqual(sorted(stderr.splitlines()), [
            "127.0.0.3 failed, exit status 3: inactive",
            "127.0.0.4 failed, exit status 255: uscmdrelay: cannot connect to 127.0.0.4 "
            "port %d: Connection refused" % self.port], context)
        with open(os.path.join(self.work, "out", "127.0.0.2")) as handle:
            self.assertEqual(handle.read(), "active\n")
        self.assertEqual((self.calls("127.0.0.2"), self.calls("127.0.0.3")), (1, 1))

    def test_without_the_wrapper_xargs_stops_at_the_first_255(self):
        # What the README warns about: the hosts after a relay error are never called.
        script = ("xargs -P 1 -I HOST uscmdrelay call --host HOST --port %d "
                  "backup::status < hosts.txt; echo \"xargs exit status: $?\"" % self.port)
        returncode, stdout, stderr = self.run_bash(script, ["127.0.0.4", "127.0.0.2"])
        self.assertEqual(stdout, "xargs exit status: 124\n", stderr)
        self.assertEqual(self.calls("127.0.0.2"), 0)


# -- the playbooks, run by ansible-playbook -------------------------------------------------

RELAY_AUTH = "[{key}]\ndescription = ansible\nauth_clusters = default\n".format(key=KEY)
RELAY_CONFIG = "[default]\nident = {command}\nident.max_args = 0\n"
FAILING_IDENT = 'sh -c "echo broken >&2; exit 3"'
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)",
                   re.MULTILINE)
AUDIT = re.compile(r'command="default::ident"')


class FanOutPlaybookTest(unittest.TestCase):
    """relay-call.yml and relay-rolling.yml over six inventory hosts, each its own relay:
    good1..good3 answer, badkey sends a wrong key, stopped has no relay any more, failing
    runs a command that exits 3. goodfile reads its key from a file."""

    @classmethod
    def setUpClass(cls):
        cls.playbook, cls.ansible_python = ansible_playbook_or_skip("the playbooks")
        cls.workdir = tempfile.mkdtemp(prefix="uscmdrelay-fanout-")
        cls.servers = {}
        try:
            cls._start_relays()
            cls._prepare()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for server in cls.servers.values():
            server.stop()
        shutil.rmtree(cls.workdir, True)

    @classmethod
    def _start_relays(cls):
        cls.ports = {}
        for name, command in (("good1", "echo I am good1"), ("good2", "echo I am good2"),
                              ("goodfile", "echo I am goodfile"),
                              ("badkey", "echo I am badkey"),
                              ("stopped", "echo I am stopped"),
                              ("failing", FAILING_IDENT)):
            directory = os.path.join(cls.workdir, name)
            os.mkdir(directory)
            support.write_config(directory, auth=RELAY_AUTH,
                                 relays=RELAY_CONFIG.format(command=command))
            server = ServerProcess(directory)
            cls.servers[name] = server
            cls.ports[name] = server.port
        cls.servers.pop("stopped").stop()

    @classmethod
    def _prepare(cls):
        key_file = os.path.join(cls.workdir, "relay.key")
        with open(key_file, "w") as handle:
            handle.write(KEY + "\n")
        os.chmod(key_file, 0o600)
        # The keys are host variables, as they would be in a vault-encrypted group_vars
        # file; badkey's is wrong, goodfile reads its key from a file.
        lines = ["[relays]"]
        for name, port in sorted(cls.ports.items()):
            key = {"badkey": "relay_key=" + WRONG_KEY,
                   "goodfile": "relay_key_file=" + key_file}.get(name, "relay_key=" + KEY)
            lines.append("%s ansible_host=127.0.0.1 relay_port=%d %s" % (name, port, key))
        lines += ["", "[rolling]", "good1", "failing", "good2", "goodfile", "",
                  "[all:vars]", "ansible_connection=local"]
        cls.inventory = os.path.join(cls.workdir, "inventory")
        with open(cls.inventory, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        config = os.path.join(cls.workdir, "ansible.cfg")
        with open(config, "w") as handle:
            handle.write("[defaults]\nretry_files_enabled = False\n"
                         "interpreter_python = %s\n" % cls.ansible_python)
        home = os.path.join(cls.workdir, "ansible-home")
        env = dict((name, value) for name, value in os.environ.items()
                   if not name.startswith("ANSIBLE_"))
        env.update({
            "ANSIBLE_CONFIG": config,
            "ANSIBLE_HOME": home,
            "ANSIBLE_LOCAL_TEMP": os.path.join(home, "local-tmp"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(home, "remote-tmp"),
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(home, "collections"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "1",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
        })
        cls.env = env

    @classmethod
    def run_ansible(cls, argv):
        """Runs an ansible command; returns (exit status, stdout and stderr)."""
        return run_ansible_command(argv, cls.env, cls.workdir)

    def run_playbook(self, playbook, *extra):
        """Runs `playbook` over the inventory with 6 forks; returns (status, output,
        the report of relay-call.yml as {host: outcome} or None)."""
        report = os.path.join(self.workdir, "report-%s.json" % self.id().split(".")[-1])
        returncode, output = self.run_ansible(
            [self.playbook, "-i", self.inventory, "--forks", "6",
             "-e", "relay_hosts=relays", "-e", "relay_command=ident", "-e", "relay_report=" + report]
            + list(extra) + [playbook])
        outcomes = None
        if os.path.exists(report):
            with open(report) as handle:
                outcomes = dict((entry["host"], entry) for entry in json.load(handle))
        return returncode, output, outcomes

    def audit_counts(self):
        """{relay name: requests for ident in its log so far}."""
        return dict((name, len(AUDIT.findall(server.log_text())))
                    for name, server in self.servers.items())

    def recap(self, output):
        """{host: (ok, changed, unreachable, failed, skipped, rescued, ignored)}."""
        return dict((match[0], tuple(int(n) for n in match[1:]))
                    for match in RECAP.findall(output))

    def assert_no_key(self, output):
        for secret in (KEY, WRONG_KEY):
            self.assertNotIn(secret, output)
            self.assertNotIn(secret[:12], output)

    def assert_real_results(self, returncode, output, outcomes):
        self.assertEqual(returncode, 2, output)  # the summary fails: three hosts failed
        self.assertEqual(sorted(outcomes), ["badkey", "failing", "good1", "good2",
                                            "goodfile", "stopped"], output)
        for name in ("good1", "good2", "goodfile"):
            self.assertEqual(outcomes[name], {
                "host": name, "status": "ok", "code": 0, "rc": 0, "changed": True,
                "msg": "I am %s" % name, "stdout": "I am %s\n" % name, "stderr": "",
                "line": "%s: ok (rc 0): I am %s" % (name, name)}, output)
        self.assertEqual(outcomes["badkey"]["line"],
                         "badkey: failed: authentication failed (code 1001)")
        self.assertEqual((outcomes["badkey"]["code"], outcomes["badkey"]["changed"]),
                         (1001, False))
        self.assertEqual(outcomes["stopped"]["line"],
                         "stopped: failed: cannot connect to 127.0.0.1 port %d: "
                         "Connection refused" % self.ports["stopped"])
        self.assertIsNone(outcomes["stopped"]["code"])
        self.assertEqual(outcomes["failing"]["line"],
                         "failing: failed: exit status 3: broken (code 3001)")
        self.assertEqual((outcomes["failing"]["code"], outcomes["failing"]["rc"],
                          outcomes["failing"]["changed"]), (3001, 3, True))
        # The summary names the three failed hosts, and only them.
        self.assertIn("3 of 6 hosts failed: badkey: failed: authentication failed "
                      "(code 1001); failing: failed: exit status 3: broken (code 3001); "
                      "stopped: failed: cannot connect to 127.0.0.1 port %d: Connection "
                      "refused" % self.ports["stopped"], output)
        # A failed host still ends its play (its failure is ignored, then summarized).
        recap = self.recap(output)
        for name in ("good1", "good2", "goodfile"):
            self.assertEqual(recap[name][1:], (1, 0, 0, 0, 0, 0), output)
        for name in ("badkey", "stopped", "failing"):
            self.assertEqual(recap[name][3], 0, output)
            self.assertEqual(recap[name][6], 1, output)  # ignored=1
        self.assertEqual(recap["failing"][1], 1, output)  # it ran: changed
        self.assertEqual(recap["localhost"][3], 1, output)  # the summary failed

    def test_fan_out_with_vvv_gives_every_host_its_result_and_never_shows_a_key(self):
        before = self.audit_counts()
        returncode, output, outcomes = self.run_playbook(RELAY_CALL, "-vvv")
        self.assert_real_results(returncode, output, outcomes)
        self.assert_no_key(output)
        after = self.audit_counts()
        self.assertEqual(dict((name, after[name] - before[name]) for name in after),
                         {"good1": 1, "good2": 1, "goodfile": 1, "failing": 1,
                          "badkey": 1})
        self.assertIn('key=- command="default::ident" arguments=[] code=1001',
                      self.servers["badkey"].log_text())
        self.assertIn("auth_key_file", output)  # -vvv shows the module arguments ...
        self.assertIn("VALUE_SPECIFIED_IN_NO_LOG_PARAMETER", output)  # ... censored

    def test_check_mode_runs_no_command_and_reports_every_host_not_run(self):
        before = self.audit_counts()
        returncode, output, outcomes = self.run_playbook(RELAY_CALL, "--check")
        self.assertEqual(returncode, 0, output)
        self.assertEqual(self.audit_counts(), before)
        self.assertEqual(len(outcomes), 6, output)
        for name, outcome in outcomes.items():
            self.assertEqual(
                (outcome["status"], outcome["changed"], outcome["code"], outcome["line"]),
                ("not run", False, None,
                 "%s: not run: check mode: ident was not run (check_mode_safe: false)"
                 % name), output)
        for name, counts in self.recap(output).items():
            if name != "localhost":  # which wrote the report
                self.assertEqual(counts[1:4], (0, 0, 0), output)  # unchanged, not failed
        self.assert_no_key(output)

    def test_check_mode_safe_runs_the_command_in_check_mode(self):
        before = self.audit_counts()
        returncode, output, outcomes = self.run_playbook(
            RELAY_CALL, "--check", "-e", "relay_check_mode_safe=true")
        self.assert_real_results(returncode, output, outcomes)
        after = self.audit_counts()
        self.assertEqual(after["good1"] - before["good1"], 1)

    def test_changed_when_overrides_changed(self):
        playbook = os.path.join(self.workdir, "unchanged.yml")
        with open(playbook, "w") as handle:
            handle.write(
                "- hosts: good1\n  gather_facts: false\n  tasks:\n"
                "    - uscmdrelay_call:\n"
                "        host: '{{ ansible_host }}'\n        port: '{{ relay_port }}'\n"
                "        command: ident\n        auth_key: '{{ relay_key }}'\n"
                "      delegate_to: localhost\n      changed_when: false\n"
                "      register: result\n"
                "    - assert: {that: [result.stdout == 'I am good1\\n', result.rc == 0]}\n")
        env_library = dict(self.env, ANSIBLE_LIBRARY=LIBRARY)
        argv = [self.playbook, "-i", self.inventory, playbook]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True,
                                   env=env_library, cwd=self.workdir,
                                   start_new_session=True)
        try:
            output = process.communicate(timeout=PLAYBOOK_TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(process.communicate()[0])
        self.assertEqual(process.returncode, 0, output)
        self.assertEqual(self.recap(output)["good1"][:4], (2, 0, 0, 0), output)

    def test_rolling_stops_at_the_first_failed_batch(self):
        before = self.audit_counts()
        returncode, output, _ = self.run_playbook(RELAY_ROLLING, "-e", "relay_hosts=rolling",
                                                  "-e", "relay_serial=2")
        self.assertEqual(returncode, 2, output)
        after = self.audit_counts()
        # The first batch (good1, failing) ran; the second (good2, goodfile) never did.
        self.assertEqual(dict((name, after[name] - before[name]) for name in after),
                         {"good1": 1, "failing": 1, "good2": 0, "goodfile": 0,
                          "badkey": 0}, output)
        self.assertIn("exit status 3: broken (code 3001)", output)
        self.assertNotIn("good2", self.recap(output))

    def test_ansible_doc_renders_every_option_and_return_value(self):
        doc = os.path.join(os.path.dirname(self.playbook), "ansible-doc")
        returncode, output = self.run_ansible([doc, "-M", LIBRARY, "uscmdrelay_call"])
        self.assertEqual(returncode, 0, output)
        self.assertNotIn("ERROR", output)
        self.assertNotIn("WARNING", output)
        for name in list(call.ARGUMENT_SPEC) + ["stdout_lines", "duration_ms", "truncated"]:
            self.assertIn(name, output)
        returncode, output = self.run_ansible([doc, "-M", LIBRARY, "--json",
                                               "uscmdrelay_call"])
        self.assertEqual(returncode, 0, output)
        entry = json.loads(output)["uscmdrelay_call"]
        options = entry["doc"]["options"]
        # The documentation and the argument spec agree, option by option.
        self.assertEqual(sorted(options), sorted(call.ARGUMENT_SPEC))
        for name, spec in call.ARGUMENT_SPEC.items():
            with self.subTest(option=name):
                self.assertEqual(options[name]["type"], spec["type"])
                self.assertEqual(options[name].get("default"), spec.get("default"))
                self.assertEqual(options[name].get("required", False),
                                 spec.get("required", False))
                self.assertEqual(options[name].get("elements"), spec.get("elements"))
        self.assertEqual(sorted(entry["return"]), sorted(
            ["code", "rc", "stdout", "stdout_lines", "stderr", "stderr_lines", "msg",
             "duration_ms", "truncated", "changed"]))


if __name__ == "__main__":
    unittest.main()
