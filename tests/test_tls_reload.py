"""SIGHUP reloads --tls-cert, --tls-key and --tls-client-ca: a renewed certificate is
served without a restart, connections already in their TLS session finish on the old
one, a broken new certificate or key is refused (ERROR) while the old one keeps serving,
and a new client CA decides which client certificates are let in.

Real server, real TLS clients, certificates made with the real `openssl` (tests/certs.py).
"""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import time
import unittest

from tests import certs, support

WAIT_SECONDS = 20.0
RELAYS = "[default]\necho = /bin/echo\n"
AUTH = "[%s]\nauth_clusters = default\n" % support.KEY
REQUEST = (json.dumps({"auth_key": support.KEY, "command": "echo",
                       "arguments": ["hi"]}) + "\n").encode()
SERVER_SERIAL = 1001  # tests/certs.py: the server's serial
RENEWED_SERIAL = 1004


def connect(port, cert=None, key=None):
    """A TLS connection to the server, handshake done, verified against the test CA."""
    pki = certs.certificates()
    context = ssl.create_default_context(cafile=pki.ca)
    if cert:
        context.load_cert_chain(cert, key)
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    try:
        return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def serial(port):
    """The serial number of the certificate the server presents now."""
    with connect(port) as tls:
        return int(tls.getpeercert()["serialNumber"], 16)


def ask(tls):
    """Sends the request on `tls`; returns the decoded reply."""
    tls.sendall(REQUEST)
    chunks = []
    while True:
        data = tls.recv(65536)
        if not data:
            break
        chunks.append(data)
    return support.decode_reply(b"".join(chunks))


class TLSReloadTest(unittest.TestCase):

    def setUp(self):
        certs.require_openssl(self)
        self.pki = certs.certificates()
        self.files = tempfile.mkdtemp(prefix="uscmdrelay-tls-reload-")
        self.addCleanup(shutil.rmtree, self.files, True)
        self.cert = self.place(self.pki.server_cert, "server.pem")
        self.key = self.place(self.pki.server_key, "server.key")

    def place(self, source, name):
        path = os.path.join(self.files, name)
        shutil.copyfile(source, path)
        return path

    def start(self, *args):
        config_dir = support.make_config_dir(self, auth=AUTH, relays=RELAYS)
        self.server = support.start_server(self, config_dir, args=(
            "--tls-cert", self.cert, "--tls-key", self.key) + args)
        return self.server

    def reload(self, outcome):
        """Sends SIGHUP and waits for the log line of its `outcome` ("reloaded" or
        "refused"); returns the log text it added."""
        start = len(self.server.log_text())
        os.kill(self.server.process.pid, signal.SIGHUP)
        pattern = re.compile("configuration reloaded" if outcome == "reloaded"
                             else "reload refused")
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            added = self.server.log_text()[start:]
            if pattern.search(added):
                return added
            time.sleep(0.05)
        self.fail("no %r after SIGHUP:\n%s" % (outcome, self.server.log_text()))

    def test_a_renewed_certificate_is_served_after_sighup_and_old_sessions_finish(self):
        server = self.start()
        self.assertEqual(serial(server.port), SERVER_SERIAL)
        in_flight = connect(server.port)  # its session began under the old certificate
        self.addCleanup(in_flight.close)
        self.place(self.pki.renewed_server_cert, "server.pem")
        self.place(self.pki.renewed_server_key, "server.key")
        added = self.reload("reloaded")
        self.assertIn("TLS certificate, key and client CA reloaded", added)
        self.assertEqual(serial(server.port), RENEWED_SERIAL)
        self.assertEqual(int(in_flight.getpeercert()["serialNumber"], 16), SERVER_SERIAL)
        self.assertEqual(ask(in_flight)["message"], "hi")
        with connect(server.port) as tls:
            self.assertEqual(ask(tls)["message"], "hi")
        self.assertEqual(server.process.poll(), None)  # no restart

    def test_a_broken_certificate_or_key_is_refused_and_the_old_one_keeps_serving(self):
        server = self.start()
        for what, cert, key, message in (
                ("garbage certificate", self.pki.garbage, self.pki.server_key,
                 "cannot load the certificate and key"),
                ("key of another certificate", self.pki.server_cert,
                 self.pki.renewed_server_key, "cannot load the certificate and key"),
                ("missing key", self.pki.renewed_server_cert, None,
                 "No such file or directory")):
            with self.subTest(what=what):
                self.place(cert, "server.pem")
                if key is None:
                    os.unlink(self.key)
                else:
                    self.place(key, "server.key")
                added = self.reload("refused")
                self.assertRegex(added, r"ERROR Config error: --tls-\w+ %s[^\n]*%s[^\n]*"
                                 r"\(reload refused; the running configuration and "
                                 r"certificate stay\)" % (re.escape(self.files), message))
                self.assertEqual(serial(server.port), SERVER_SERIAL)
                with connect(server.port) as tls:
                    self.assertEqual(ask(tls)["message"], "hi")
        # Fixed files are taken at the next SIGHUP.
        self.place(self.pki.renewed_server_cert, "server.pem")
        self.place(self.pki.renewed_server_key, "server.key")
        self.reload("reloaded")
        self.assertEqual(serial(server.port), RENEWED_SERIAL)

    def test_a_new_client_ca_decides_which_client_certificates_get_in(self):
        client_ca = self.place(self.pki.ca, "client-ca.pem")
        server = self.start("--tls-client-ca", client_ca)
        ours = (self.pki.client_cert, self.pki.client_key)
        theirs = (self.pki.other_client_cert, self.pki.other_client_key)
        self.assertEqual(self.outcome(server.port, *ours), "hi")
        self.assertEqual(self.outcome(server.port, *theirs), "refused")
        self.place(self.pki.other_ca, "client-ca.pem")
        self.reload("reloaded")
        self.assertEqual(self.outcome(server.port, *theirs), "hi")
        self.assertEqual(self.outcome(server.port, *ours), "refused")

    def outcome(self, port, cert, key):
        """"hi" when a client with `cert` gets its reply, "refused" when the server
        drops it (TLS 1.3 reports a refused client certificate after the handshake)."""
        try:
            with connect(port, cert, key) as tls:
                return ask(tls)["message"]
        except (ssl.SSLError, OSError, ValueError):
            return "refused"


if __name__ == "__main__":
    unittest.main()
