"""End-to-end tests of TLS and mutual TLS: the server's --tls-* options, `call --tls`,
and the stock TLS clients (openssl s_client, ncat --ssl, socat OPENSSL:).

The certificates are a throwaway PKI made with the `openssl` binary (tests/certs.py);
without that binary every test here is skipped.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import unittest

from tests import certs, support
from tests.support import KEY, start_server
from tests.test_client import can_bind_ipv6_loopback, run_call
from tests.test_server import (BIG_RELAYS, BIG_SERVER_ARGS, PAUSE_AFTER_BYTES,
                               SlowReader, check_big_reply, small_buffer_connection)

CLIENT_TIMEOUT = 20.0
REQUEST_TIMEOUT_SECONDS = 2
# No warnings at start-up: a failed start must print its one error line and nothing else.
TLS_RELAYS = "[default]\necho = /bin/echo\necho.arg_pattern = [^-].*\n"
TLS_AUTH = "[%s]\nauth_clusters = default\n" % KEY
REQUEST_LINE = json.dumps({"auth_key": KEY, "command": "echo",
                           "arguments": ["over", "tls"]}) + "\n"


def tls_server_args(pki, client_ca=False):
    args = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
            "--request-timeout", str(REQUEST_TIMEOUT_SECONDS), "--shutdown-timeout", "0"]
    if client_ca:
        args += ["--tls-client-ca", pki.ca]
    return args


class _TLSServer(unittest.TestCase):
    """One TLS server (the .pyz) per class, stopped by PID in tearDownClass."""

    CLIENT_CA = False

    @classmethod
    def setUpClass(cls):
        if not certs.have_openssl():
            raise unittest.SkipTest("openssl is not installed")
        cls.pki = certs.certificates()
        support.start_class_server(cls, auth=TLS_AUTH, relays=TLS_RELAYS,
                                   args=tls_server_args(cls.pki, cls.CLIENT_CA))

    @classmethod
    def tearDownClass(cls):
        support.stop_class_server(cls)

    def call(self, *args, **kwargs):
        return run_call(self, ["--port", str(self.server.port)] + list(args), **kwargs)

    def call_tls(self, *args, **kwargs):
        return self.call(*(("--tls", "--tls-ca", self.pki.ca) + args), **kwargs)

    def assertWorks(self, result, stdout="over tls\n"):
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, stdout, ""))

    def assertRefused(self, result):
        """255, nothing on stdout, one `uscmdrelay: ...` line without a code."""
        self.assertEqual((result.returncode, result.stdout), (255, ""), result)
        self.assertRegex(result.stderr, r"\Auscmdrelay: [^\n]+\n\Z")
        self.assertNotIn("(code", result.stderr)

    def log_count(self, text):
        return self.server.log_text().count(text)

    def wait_for_log_count(self, text, count, limit_seconds=10.0):
        deadline = time.monotonic() + limit_seconds
        while self.log_count(text) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertGreaterEqual(self.log_count(text), count, self.server.log_text())

    def shell(self, pipeline, programs):
        """Runs `pipeline` (sh -c, with $CA, $PORT, $REQUEST and the client cert in
        $CERT/$CERT_KEY); returns its stdout. Skips when one of `programs` is absent."""
        for program in programs:
            if shutil.which(program) is None:
                self.skipTest("%s is not installed" % program)
        env = dict(os.environ, CA=self.pki.ca, PORT=str(self.server.port),
                   REQUEST=REQUEST_LINE, CERT=self.pki.client_cert,
                   CERT_KEY=self.pki.client_key)
        return support.run_pipeline(self, pipeline, env, CLIENT_TIMEOUT)

    def assertReplyLine(self, out):
        self.assertTrue(out.endswith("\n") and out.count("\n") == 1, repr(out))
        reply = json.loads(out)
        self.assertEqual((reply["code"], reply["message"]), (0, "over tls"), reply)


class TLSTests(_TLSServer):

    def test_call_with_the_ca_verifies_the_server_and_runs(self):
        self.assertWorks(self.call_tls("echo", "over", "tls"))
        self.assertIn("listening on 127.0.0.1 port %d with TLS" % self.server.port,
                      self.server.log_text())

    def test_call_verifies_the_name_localhost_from_the_certificate(self):
        self.assertWorks(self.call_tls("--host", "localhost", "echo", "over", "tls"))

    def test_call_without_the_ca_fails_verification_with_255(self):
        # The system's CAs do not know the throwaway CA.
        result = self.call("--tls", "echo", "over", "tls")
        self.assertRefused(result)
        self.assertIn("TLS with 127.0.0.1 port %d failed" % self.server.port, result.stderr)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", result.stderr)

    def test_call_with_a_server_name_not_in_the_certificate_fails(self):
        result = self.call_tls("--tls-server-name", "other.example", "echo", "x")
        self.assertRefused(result)
        self.assertIn("TLS with", result.stderr)
        self.assertWorks(self.call_tls("--tls-server-name", "localhost",
                                       "echo", "over", "tls"))

    def test_call_with_a_ca_from_another_pki_fails(self):
        result = self.call("--tls", "--tls-ca", self.pki.other_ca, "echo", "x")
        self.assertRefused(result)

    def test_plaintext_request_is_told_in_plain_text_that_the_server_speaks_tls(self):
        # nc and friends see one JSON line instead of a reset that says nothing.
        before = self.log_count("code=2001")
        for blanks in ("", " \r\n\t"):
            with self.subTest(blanks=blanks):
                with socket.create_connection(("127.0.0.1", self.server.port),
                                              timeout=15) as sock:
                    sock.sendall((blanks + REQUEST_LINE).encode("utf-8"))
                    data = support.read_until_gone(sock, 15.0)
                self.assertEqual(support.decode_reply(data), {
                    "status": "error", "code": 2001, "message": "this server speaks TLS: "
                    "connect with TLS (uscmdrelay call --tls)"})
        self.assertNotIn(KEY, self.server.log_text())
        self.wait_for_log_count("code=2001", before + 2)
        self.assertWorks(self.call_tls("echo", "over", "tls"))

    def test_garbage_that_is_neither_tls_nor_json_is_dropped(self):
        before = self.log_count("TLS handshake failed")
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=15) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = support.read_until_gone(sock, 15.0)
        self.assertNotIn(b"{", data)  # no JSON reply in clear text to a stranger
        self.wait_for_log_count("TLS handshake failed", before + 1)
        self.assertWorks(self.call_tls("echo", "over", "tls"))

    def test_plaintext_call_to_a_tls_server_says_use_tls_and_exits_255(self):
        result = self.call("echo", "over", "tls")
        self.assertEqual((result.returncode, result.stdout, result.stderr), (
            255, "", "uscmdrelay: 127.0.0.1 port %d speaks TLS: use --tls\n"
            % self.server.port))
        self.assertWorks(self.call_tls("echo", "over", "tls"))

    def test_slow_handshake_is_cut_off_while_others_are_served(self):
        before = self.log_count("code=2006")
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=15) as sock:
            started = time.monotonic()
            # Connected, sending nothing: meanwhile another client is served at once.
            result = self.call_tls("echo", "over", "tls")
            self.assertWorks(result)
            self.assertLess(time.monotonic() - started, REQUEST_TIMEOUT_SECONDS + 8)
            data = support.read_until_gone(sock, 15.0)
            elapsed = time.monotonic() - started
        self.assertNotIn(b"{", data)
        self.assertLess(elapsed, REQUEST_TIMEOUT_SECONDS + 8)
        self.wait_for_log_count("code=2006", before + 1)

    def test_openssl_s_client_is_a_client(self):
        out = self.shell('printf "%s" "$REQUEST" | openssl s_client -quiet '
                         '-verify_return_error -CAfile "$CA" -connect 127.0.0.1:$PORT '
                         '2>/dev/null', ["openssl"])
        self.assertReplyLine(out)

    def test_ncat_ssl_is_a_client(self):
        # ncat checks the name against DNS names only, so it connects to `localhost`.
        out = self.shell('printf "%s" "$REQUEST" | ncat --ssl --ssl-verify '
                         '--ssl-trustfile "$CA" localhost $PORT', ["ncat"])
        self.assertReplyLine(out)

    def test_socat_openssl_is_a_client(self):
        out = self.shell('printf "%s" "$REQUEST" | socat -t 10 - '
                         'OPENSSL:127.0.0.1:$PORT,cafile="$CA"', ["socat"])
        self.assertReplyLine(out)

    def test_source_tree_client_works_too(self):
        self.assertWorks(self.call_tls("echo", "over", "tls", program="src"))


class MutualTLSTests(_TLSServer):
    CLIENT_CA = True

    def with_cert(self, cert, key, *args):
        return self.call_tls(*(("--tls-cert", cert, "--tls-key", key) + args))

    def test_client_certificate_from_the_ca_is_accepted(self):
        self.assertWorks(self.with_cert(self.pki.client_cert, self.pki.client_key,
                                        "echo", "over", "tls"))
        self.assertIn("with mutual TLS", self.server.log_text())

    def test_client_without_a_certificate_is_refused_and_logged(self):
        before = self.log_count("TLS handshake failed")
        self.assertRefused(self.call_tls("echo", "over", "tls"))
        self.wait_for_log_count("TLS handshake failed", before + 1)
        self.assertNotIn("over", self.server.log_text().split("TLS handshake failed")[-1])
        self.assertWorks(self.with_cert(self.pki.client_cert, self.pki.client_key,
                                        "echo", "over", "tls"))

    def test_client_certificate_from_another_ca_is_refused(self):
        before = self.log_count("TLS handshake failed")
        self.assertRefused(self.with_cert(self.pki.other_client_cert,
                                          self.pki.other_client_key, "echo", "x"))
        self.wait_for_log_count("TLS handshake failed", before + 1)

    def test_ncat_with_a_client_certificate_is_a_client(self):
        out = self.shell('printf "%s" "$REQUEST" | ncat --ssl --ssl-verify '
                         '--ssl-trustfile "$CA" --ssl-cert "$CERT" --ssl-key "$CERT_KEY" '
                         'localhost $PORT', ["ncat"])
        self.assertReplyLine(out)

    def test_openssl_s_client_without_a_certificate_gets_no_reply(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        before = self.log_count("TLS handshake failed")
        process = subprocess.Popen(
            ["openssl", "s_client", "-quiet", "-CAfile", self.pki.ca,
             "-connect", "127.0.0.1:%d" % self.server.port],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            universal_newlines=True)
        try:
            out, _ = process.communicate(REQUEST_LINE, timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            self.fail("openssl s_client did not finish")
        self.assertNotIn("{", out)
        self.wait_for_log_count("TLS handshake failed", before + 1)


class TLSBigReplyTests(unittest.TestCase):

    def test_big_reply_reaches_a_slow_reader_intact_and_ends_with_close_notify(self):
        certs.require_openssl(self)
        pki = certs.certificates()
        config_dir = support.make_config_dir(self, auth=TLS_AUTH, relays=BIG_RELAYS)
        server = start_server(self, config_dir, args=list(BIG_SERVER_ARGS) + [
            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
            "--request-timeout", "60"])
        context = ssl.create_default_context(cafile=pki.ca)
        # Without suppress_ragged_eofs, recv() returns b"" only after close_notify: a
        # stream that merely stops raises SSLEOFError ("EOF occurred in violation of
        # protocol"), as a reply cut off by an attacker would.
        sock = context.wrap_socket(small_buffer_connection(server.port),
                                   server_hostname="localhost",
                                   suppress_ragged_eofs=False)
        self.addCleanup(sock.close)
        sock.sendall(json.dumps({"auth_key": KEY, "command": "big"}).encode() + b"\n")
        reader = SlowReader(sock, PAUSE_AFTER_BYTES).start()
        self.addCleanup(reader.stop)
        self.assertTrue(reader.wait_for_pause(), "the reply ended after %d bytes (%r)"
                        % (reader.received, reader.error))
        # The server's TLS write to the paused reader would block; another TLS client
        # is served meanwhile.
        result = run_call(self, ["--port", str(server.port), "--tls", "--tls-ca", pki.ca,
                                 "echo", "meanwhile"])
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "meanwhile\n", ""))
        self.assertFalse(reader.done.is_set(), "the slow reader should still be reading")
        reader.resume()
        self.assertTrue(reader.join(), "the slow reader did not finish")
        self.assertIsNone(reader.error, "after %d bytes (no close_notify?)"
                          % reader.received)
        check_big_reply(self, reader.data)


class TLSShutdownTests(unittest.TestCase):

    def test_idle_and_handshaking_connections_do_not_hold_sigterm(self):
        certs.require_openssl(self)
        pki = certs.certificates()
        config_dir = support.make_config_dir(self, auth=TLS_AUTH, relays=TLS_RELAYS)
        server = start_server(self, config_dir, args=[
            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
            "--request-timeout", "30", "--shutdown-timeout", "30"])
        address = ("127.0.0.1", server.port)
        # Connected, no handshake at all.
        idle = socket.create_connection(address, timeout=15)
        self.addCleanup(idle.close)
        # Mid-handshake: the first bytes of a ClientHello, then nothing.
        partial = socket.create_connection(address, timeout=15)
        self.addCleanup(partial.close)
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        # Handshake done, no request. Accepted after the two above, so once it is done
        # the server holds all three.
        context = ssl.create_default_context(cafile=pki.ca)
        quiet = context.wrap_socket(socket.create_connection(address, timeout=15),
                                    server_hostname="localhost")
        self.addCleanup(quiet.close)
        # With TLS 1.3 the client is done before the server has read its Finished; the
        # server's session tickets come once the server is done too.
        quiet.settimeout(0.1)
        deadline = time.monotonic() + 10.0
        while not (quiet.session and quiet.session.has_ticket):
            self.assertLess(time.monotonic(), deadline, "no session ticket came")
            try:
                quiet.recv(1)
            except socket.timeout:
                pass
        quiet.settimeout(15)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            status = server.process.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("an idle TLS connection held the stop:\n%s" % server.log_text())
        self.assertEqual(status, 0, server.log_text())
        self.assertLess(time.monotonic() - started, 10.0)
        # The one past its handshake was told why; the others were just closed.
        self.assertEqual(json.loads(support.read_until_gone(quiet).decode("utf-8")),
                         {"status": "error", "code": 3004,
                          "message": "server is shutting down"})
        self.assertNotIn(b"{", support.read_until_gone(idle))
        log_text = server.log_text()
        self.assertIn("stopping: no new connections; 0 requests in flight", log_text)
        self.assertEqual(log_text.count("code=3004"), 3, log_text)
        self.assertNotIn("Traceback", log_text)


class TLSOverIPv6Tests(unittest.TestCase):

    def test_call_over_ipv6_loopback_verifies_the_address(self):
        certs.require_openssl(self)
        if not can_bind_ipv6_loopback():
            self.skipTest("cannot bind ::1")
        pki = certs.certificates()
        config_dir = support.make_config_dir(self, auth=TLS_AUTH, relays=TLS_RELAYS)
        server = start_server(self, config_dir, args=tls_server_args(pki) + ["--host", "::1"])
        result = run_call(self, ["--host", "::1", "--port", str(server.port), "--tls",
                                 "--tls-ca", pki.ca, "echo", "v6", "tls"])
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "v6 tls\n", ""))


class TLSStartupTests(unittest.TestCase):
    """Bad TLS options stop the server at start-up: exit 2, one `Config error:` line."""

    def setUp(self):
        certs.require_openssl(self)
        self.pki = certs.certificates()
        self.config_dir = support.make_config_dir(self, auth=TLS_AUTH, relays=TLS_RELAYS)

    def start(self, args, program="pyz"):
        """Runs a server that must fail to start; returns (status, stdout, stderr)."""
        argv = support.command(program) + ["--config-dir", self.config_dir,
                                           "--host", "127.0.0.1", "--port", "0"] + args
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, universal_newlines=True,
                                   env=support.environment(program))
        try:
            out, err = process.communicate(timeout=support.START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            self.fail("the server started with %r" % args)
        return process.returncode, out, err

    def assertConfigError(self, args, *named, **kwargs):
        status, out, err = self.start(args, **kwargs)
        self.assertEqual(status, 2, err)
        self.assertEqual(out, "")
        self.assertRegex(err, r"\AConfig error: [^\n]+\n\Z")
        self.assertNotIn("Traceback", err)
        for text in named:
            self.assertIn(text, err)
        return err

    def test_missing_certificate_file_is_named(self):
        missing = os.path.join(self.config_dir, "missing.pem")
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                self.assertConfigError(["--tls-cert", missing, "--tls-key",
                                        self.pki.server_key], missing, program=program)

    def test_missing_key_file_is_named(self):
        missing = os.path.join(self.config_dir, "missing.key")
        self.assertConfigError(["--tls-cert", self.pki.server_cert, "--tls-key", missing],
                               missing)

    def test_key_that_does_not_match_the_certificate(self):
        self.assertConfigError(["--tls-cert", self.pki.server_cert,
                                "--tls-key", self.pki.client_key],
                               self.pki.server_cert, self.pki.client_key)

    def test_garbage_certificate(self):
        self.assertConfigError(["--tls-cert", self.pki.garbage,
                                "--tls-key", self.pki.server_key], self.pki.garbage)

    def test_certificate_without_its_key(self):
        self.assertConfigError(["--tls-cert", self.pki.server_cert], self.pki.server_cert)

    def test_garbage_client_ca(self):
        self.assertConfigError(["--tls-cert", self.pki.server_cert,
                                "--tls-key", self.pki.server_key,
                                "--tls-client-ca", self.pki.garbage], self.pki.garbage)

    def test_missing_client_ca(self):
        missing = os.path.join(self.config_dir, "missing-ca.pem")
        self.assertConfigError(["--tls-cert", self.pki.server_cert,
                                "--tls-key", self.pki.server_key,
                                "--tls-client-ca", missing], missing)

    def test_key_or_client_ca_without_a_certificate(self):
        for args in (["--tls-key", self.pki.server_key],
                     ["--tls-client-ca", self.pki.ca]):
            with self.subTest(args=args):
                err = self.assertConfigError(args)
                self.assertEqual(err, "Config error: --tls-key and --tls-client-ca need "
                                      "--tls-cert\n")


if __name__ == "__main__":
    unittest.main()
