"""End-to-end tests of keys at rest and per-key source addresses: `[sha256:<hex>]`
sections, `hash-key`, `init --hashed`, and `allowed_hosts` with code 1003 over IPv4,
IPv6 and a dual-stack listener.
"""

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

from tests import support
from tests.support import KEY, request, start_server
from tests.test_client import can_bind_ipv6_loopback, run_call

HASHED_KEY = "hashed-key-0123456789abcdef"
THIRD_KEY = "third-key-0123456789abcdef"
RELAYS = "[default]\necho = /bin/echo\n"
NOT_ALLOWED = {"status": "error", "code": 1003,
               "message": "client address not allowed for this key"}
AUTH_FAILED = {"status": "error", "code": 1001, "message": "authentication failed"}


def digest(key):
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def hidden(section):
    """How config errors name an auth.conf section: a fingerprint, never the key."""
    match = re.match(r"sha256:([0-9a-f]{64})\Z", section)
    if match:
        return "key sha256:" + match.group(1)[:12]
    return "key sha256:" + digest(section)[:12]


def auth_text(*sections):
    """auth.conf text from (section name, {option: value}) pairs."""
    parts = []
    for name, options in sections:
        lines = ["[%s]" % name]
        options = dict(options)
        options.setdefault("auth_clusters", "default")
        lines += ["%s = %s" % item for item in sorted(options.items())]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def cli(test, args, stdin=b"", program="pyz"):
    """Runs `uscmdrelay ARGS` (no key in the environment); returns a CallResult."""
    return run_call(test, args, key=None, program=program, stdin=stdin, subcommand=None)


def echo(port, key, host="127.0.0.1"):
    return request(port, auth_key=key, command="echo", arguments=["ok"], host=host)


class _KeyTestCase(unittest.TestCase):

    def server(self, auth, args=(), program="pyz"):
        config_dir = support.make_config_dir(self, auth=auth, relays=RELAYS)
        return start_server(self, config_dir, args=list(args), program=program)

    def assertRuns(self, reply):
        self.assertEqual((reply["code"], reply["stdout"]), (0, "ok\n"), reply)

    def assertConfigError(self, auth, problem, server_too=False):
        """configtest (and with `server_too` the server) refuses `auth` with exactly
        `problem`."""
        config_dir = support.make_config_dir(self, auth=auth, relays=RELAYS)
        expected = "Config error: %s: %s\n" % (os.path.join(config_dir, "auth.conf"),
                                               problem)
        result = cli(self, ["configtest", "--config-dir", config_dir])
        self.assertEqual((result.returncode, result.stderr), (2, expected), result)
        if server_too:
            result = cli(self, ["--config-dir", config_dir, "--host", "127.0.0.1",
                                "--port", "0"])
            self.assertEqual((result.returncode, result.stderr), (2, expected), result)


class HashedKeyTests(_KeyTestCase):

    def test_hashed_section_matches_the_key_that_hashes_to_it(self):
        server = self.server(auth_text(("sha256:" + digest(HASHED_KEY), {})))
        self.assertRuns(echo(server.port, HASHED_KEY))
        # The digest itself is not a key, and neither is the section name.
        self.assertEqual(echo(server.port, digest(HASHED_KEY)), AUTH_FAILED)
        self.assertEqual(echo(server.port, "sha256:" + digest(HASHED_KEY)), AUTH_FAILED)
        self.assertNotIn(HASHED_KEY, server.log_text())

    def test_plain_and_hashed_sections_mix_in_one_file(self):
        auth = auth_text((KEY, {"description": "plain one"}),
                         ("sha256:" + digest(HASHED_KEY), {"description": "hashed one"}))
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                server = self.server(auth, program=program)
                self.assertRuns(echo(server.port, KEY))
                self.assertRuns(echo(server.port, HASHED_KEY))
                self.assertEqual(echo(server.port, THIRD_KEY), AUTH_FAILED)
                log = server.log_text()
                self.assertIn('key="plain one"', log)
                self.assertIn('key="hashed one"', log)

    def test_hash_key_reads_stdin_and_its_header_works_pasted_into_auth_conf(self):
        for program, line in (("pyz", HASHED_KEY + "\n"), ("pyz", HASHED_KEY + "\r\n"),
                              ("pyz", HASHED_KEY), ("src", HASHED_KEY + "\n")):
                with self.subTest(program=program, line=line):
                    result = cli(self, ["hash-key"], stdin=line.encode("utf-8"),
                                 program=program)
                    self.assertEqual((result.returncode, result.stdout, result.stderr),
                                     (0, "[sha256:%s]\n" % digest(HASHED_KEY), ""))
        server = self.server(result.stdout + "auth_clusters = default\n")
        self.assertRuns(echo(server.port, HASHED_KEY))
        call = run_call(self, ["--port", str(server.port), "echo", "via", "call"],
                        key=HASHED_KEY)
        self.assertEqual((call.returncode, call.stdout), (0, "via call\n"), call)

    def test_hash_key_without_a_key_on_stdin_exits_2(self):
        result = cli(self, ["hash-key"], stdin=b"")
        self.assertEqual((result.returncode, result.stdout), (2, ""), result)
        self.assertEqual(result.stderr, "uscmdrelay: no key on stdin (or use --generate)\n")

    def test_hash_key_generate_prints_the_key_once_and_the_matching_header(self):
        result = cli(self, ["hash-key", "--generate"])
        self.assertEqual(result.returncode, 0, result)
        match = re.match(r"\A\[sha256:([0-9a-f]{64})\]\n\Z", result.stdout)
        self.assertIsNotNone(match, result)
        keys = re.findall(r"[A-Za-z0-9_-]{32,}", result.stderr)
        self.assertEqual(len(keys), 1, result.stderr)
        key = keys[0]
        self.assertEqual(result.stderr.count(key), 1)
        self.assertNotIn(key, result.stdout)
        self.assertEqual(digest(key), match.group(1))
        server = self.server(result.stdout + "auth_clusters = default\n")
        self.assertRuns(echo(server.port, key))
        # Another run, another key.
        self.assertNotEqual(cli(self, ["hash-key", "--generate"]).stdout, result.stdout)

    def test_init_hashed_stores_only_the_hash_and_the_printed_key_works(self):
        parent = tempfile.mkdtemp(prefix="uscmdrelay-init-")
        self.addCleanup(shutil.rmtree, parent, True)
        config_dir = os.path.join(parent, "conf")
        result = cli(self, ["init", "--hashed", "--config-dir", config_dir])
        self.assertEqual((result.returncode, result.stderr), (0, ""), result)
        lines = result.stdout.splitlines()
        heading = [i for i, line in enumerate(lines) if line.startswith("Your auth key")]
        self.assertEqual(len(heading), 1, result.stdout)
        key = lines[heading[0] + 1].strip()
        self.assertRegex(key, r"\A[A-Za-z0-9_-]{32,}\Z")
        auth_path = os.path.join(config_dir, "auth.conf")
        with open(auth_path) as handle:
            auth = handle.read()
        self.assertNotIn(key, auth)
        self.assertIn("[sha256:%s]\n" % digest(key), auth)
        self.assertEqual(stat.S_IMODE(os.stat(auth_path).st_mode), 0o600)
        server = start_server(self, config_dir)
        reply = request(server.port, auth_key=key, command="echo", arguments=["init"])
        self.assertEqual((reply["code"], reply["stdout"]), (0, "init\n"), reply)
        self.assertNotIn(key, server.log_text())

    def test_malformed_hashed_sections_are_config_errors(self):
        for section in ("sha256:" + digest(HASHED_KEY)[:63],          # too short
                        "sha256:" + digest(HASHED_KEY) + "0",         # too long
                        "sha256:" + digest(HASHED_KEY).upper(),       # uppercase
                        "sha256:" + "g" * 64):                        # not hex
            with self.subTest(section=section):
                self.assertConfigError(
                    auth_text((section, {})),
                    "[%s]: a hashed key is 'sha256:' and 64 lowercase hex digits "
                    "(uscmdrelay hash-key prints one)" % hidden(section),
                    server_too=section.endswith("0"))

    def test_the_same_key_plain_and_hashed_is_a_config_error(self):
        hashed = "sha256:" + digest(KEY)
        self.assertConfigError(
            auth_text((KEY, {}), (hashed, {})),
            "[%s]: this key is defined twice (plain and hashed?)" % hidden(hashed),
            server_too=True)
        self.assertConfigError(
            auth_text((hashed, {}), (KEY, {})),
            "[%s]: this key is defined twice (plain and hashed?)" % hidden(KEY))


class AllowedHostsTests(_KeyTestCase):

    def test_key_allowed_from_its_address_works_over_ipv4(self):
        server = self.server(auth_text(
            (KEY, {"allowed_hosts": "127.0.0.1"}),
            (HASHED_KEY, {"allowed_hosts": "10.0.0.0/8, 192.168.1.7 ::1  127.0.0.0/8"})))
        self.assertRuns(echo(server.port, KEY))
        self.assertRuns(echo(server.port, HASHED_KEY))

    def test_key_from_another_network_gets_1003_over_ipv4(self):
        auth = auth_text((KEY, {"allowed_hosts": "10.0.0.0/8", "description": "remote"}),
                         (HASHED_KEY, {"allowed_hosts": "::1"}))
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                server = self.server(auth, program=program)
                self.assertEqual(echo(server.port, KEY), NOT_ALLOWED)
                # An IPv6 rule never matches an IPv4 client.
                self.assertEqual(echo(server.port, HASHED_KEY), NOT_ALLOWED)
                # An unknown key is still 1001: addresses do not reveal which keys exist.
                self.assertEqual(echo(server.port, THIRD_KEY), AUTH_FAILED)
                self.assertIn("code=1003", server.log_text())
                self.assertNotIn(KEY, server.log_text())
        result = run_call(self, ["--port", str(server.port), "echo", "x"])
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (255, "", "uscmdrelay: client address not allowed for this key "
                                   "(code 1003)\n"))

    def test_key_without_allowed_hosts_is_allowed_from_anywhere(self):
        server = self.server(auth_text((KEY, {}),
                                       (HASHED_KEY, {"allowed_hosts": "10.0.0.0/8"})))
        self.assertRuns(echo(server.port, KEY))
        self.assertEqual(echo(server.port, HASHED_KEY), NOT_ALLOWED)

    def test_hashed_key_with_allowed_hosts(self):
        server = self.server(auth_text(
            ("sha256:" + digest(HASHED_KEY), {"allowed_hosts": "10.1.2.3"}),
            ("sha256:" + digest(THIRD_KEY), {"allowed_hosts": "127.0.0.1/32"})))
        self.assertEqual(echo(server.port, HASHED_KEY), NOT_ALLOWED)
        self.assertRuns(echo(server.port, THIRD_KEY))

    def test_over_ipv6_loopback(self):
        if not can_bind_ipv6_loopback():
            self.skipTest("cannot bind ::1")
        server = self.server(auth_text((KEY, {"allowed_hosts": "::1"}),
                                       (HASHED_KEY, {"allowed_hosts": "127.0.0.1"}),
                                       (THIRD_KEY, {"allowed_hosts": "fe80::/10, ::1/128"})),
                             args=["--host", "::1"])
        self.assertIn("listening on ::1 port %d" % server.port, server.log_text())
        self.assertRuns(echo(server.port, KEY, host="::1"))
        self.assertRuns(echo(server.port, THIRD_KEY, host="::1"))
        self.assertEqual(echo(server.port, HASHED_KEY, host="::1"), NOT_ALLOWED)
        self.assertIn("client=[::1]:", server.log_text())
        result = run_call(self, ["--host", "::1", "--port", str(server.port), "echo", "x"],
                          key=HASHED_KEY)
        self.assertEqual((result.returncode, result.stderr),
                         (255, "uscmdrelay: client address not allowed for this key "
                               "(code 1003)\n"))

    def test_ipv4_mapped_client_on_a_dual_stack_listener_matches_ipv4_rules(self):
        if not can_bind_ipv6_loopback():
            self.skipTest("no IPv6")
        try:
            with open("/proc/sys/net/ipv6/bindv6only") as handle:
                if handle.read().strip() == "1":
                    self.skipTest("IPv6 sockets are IPv6-only on this host")
        except OSError:
            pass
        server = self.server(auth_text((KEY, {"allowed_hosts": "127.0.0.0/8"}),
                                       (HASHED_KEY, {"allowed_hosts": "::1"})),
                             args=["--host", "::"])
        self.assertIn("listening on :: port %d" % server.port, server.log_text())
        self.assertRuns(echo(server.port, KEY, host="127.0.0.1"))
        # The server did see the IPv4-mapped form: the rule matched through it.
        self.assertIn("client=[::ffff:127.0.0.1]:", server.log_text())
        self.assertEqual(echo(server.port, HASHED_KEY, host="127.0.0.1"), NOT_ALLOWED)
        self.assertRuns(echo(server.port, HASHED_KEY, host="::1"))
        self.assertEqual(echo(server.port, KEY, host="::1"), NOT_ALLOWED)

    def test_invalid_entries_are_config_errors(self):
        for value, problem in (
                ("300.1.1.1", "'300.1.1.1' is not an IP address or network"),
                ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
                ("::1/129", "'::1/129' is not an IP address or network"),
                ("fe80::1%", "'fe80::1%' is not an IP address or network"),
                # Not address-like, so not quoted: it might be a key pasted there.
                ("banana", "entry 1 is not an IP address or network (host names are not "
                           "accepted; not quoted, as it may be a key)"),
                ("127.0.0.1 banana", "entry 2 is not an IP address or network (host names "
                                     "are not accepted; not quoted, as it may be a key)"),
                ("localhost", "entry 1 is not an IP address or network (host names are not "
                              "accepted; not quoted, as it may be a key)"),
                ("::1, " + KEY, "entry 2 is not an IP address or network (host names are "
                                "not accepted; not quoted, as it may be a key)"),
                ("", "empty; list addresses or networks (or remove the line to allow any "
                     "address)"),
                (" , ", "empty; list addresses or networks (or remove the line to allow "
                        "any address)")):
            with self.subTest(value=value):
                self.assertConfigError(auth_text((KEY, {"allowed_hosts": value})),
                                       "[%s] allowed_hosts: %s" % (hidden(KEY), problem),
                                       server_too=value == "300.1.1.1")


class ImportCostTests(unittest.TestCase):

    def test_loading_a_config_without_allowed_hosts_leaves_openssl_and_ipaddress_out(self):
        # hashlib's OpenSSL costs the server ~3.5 MB, ipaddress ~3 ms of start-up; the
        # built-in sha256 and a deferred ipaddress avoid both (unless a build lacks it).
        try:
            import _sha2  # noqa: F401
        except ImportError:
            try:
                import _sha256  # noqa: F401
            except ImportError:
                self.skipTest("this Python has no built-in sha256 module")
        directory = support.make_config_dir(self)
        script = ("import sys; from uscmdrelay.config import load_config; "
                  "config = load_config(sys.argv[1]); "
                  "print(len(config.keys), sorted({'_hashlib', 'hashlib', 'ipaddress'} "
                  "& set(sys.modules)))")
        # -S: a site-packages .pth file may import ipaddress itself (pathlib does).
        output = subprocess.check_output(
            [sys.executable, "-S", "-c", script, directory], env=support.environment("src"),
            universal_newlines=True, timeout=60)
        self.assertEqual(output, "2 []\n")


if __name__ == "__main__":
    unittest.main()
