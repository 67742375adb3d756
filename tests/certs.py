"""Throwaway TLS certificates for the tests, made with the `openssl` binary.

`certificates()` returns a `Certificates` whose attributes are PEM file paths: a CA, a
server certificate signed by it (SAN DNS:localhost, IP:127.0.0.1, IP:::1), the same
server renewed (a new key and serial, same CA and names), a client certificate signed by
it, and a second, unrelated CA with its own client certificate.
They are made once per test run in a temporary directory removed at exit. Tests call
`require_openssl(test)` first: without the binary they are skipped, never failed.
"""

import atexit
import os
import shutil
import subprocess
import tempfile

OPENSSL_TIMEOUT = 60.0
DAYS = "2"

# Only what the certificates need, so the system's openssl.cnf does not matter. The
# key identifiers and key usages keep Python 3.13's VERIFY_X509_STRICT satisfied.
OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = uscmdrelay test

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_cache = {}


class Certificates(object):
    """Paths of the PEM files of one throwaway PKI (see the module docstring)."""

    def __init__(self, directory):
        self.directory = directory
        path = lambda name: os.path.join(directory, name)  # noqa: E731
        self.ca = path("ca.pem")
        self.ca_key = path("ca.key")
        self.server_cert = path("server.pem")
        self.server_key = path("server.key")
        self.renewed_server_cert = path("renewed-server.pem")
        self.renewed_server_key = path("renewed-server.key")
        self.client_cert = path("client.pem")
        self.client_key = path("client.key")
        self.other_ca = path("other-ca.pem")
        self.other_ca_key = path("other-ca.key")
        self.other_client_cert = path("other-client.pem")
        self.other_client_key = path("other-client.key")
        self.garbage = path("garbage.pem")


def have_openssl():
    return shutil.which("openssl") is not None


def require_openssl(test):
    """Skips `test` when the openssl binary is not installed."""
    if not have_openssl():
        test.skipTest("openssl is not installed")


def certificates():
    """The test PKI, made on first use; raises AssertionError if openssl fails."""
    if "pki" not in _cache:
        directory = tempfile.mkdtemp(prefix="uscmdrelay-certs-")
        atexit.register(shutil.rmtree, directory, True)
        _cache["pki"] = _make(Certificates(directory))
    return _cache["pki"]


def _make(pki):
    config = os.path.join(pki.directory, "openssl.cnf")
    with open(config, "w") as handle:
        handle.write(OPENSSL_CONFIG)
    for cert, key, name in ((pki.ca, pki.ca_key, "uscmdrelay test CA"),
                            (pki.other_ca, pki.other_ca_key, "some other CA")):
        _openssl(pki, "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-keyout", key, "-out", cert,
                 "-days", DAYS, "-subj", "/CN=" + name, "-config", config,
                 "-extensions", "ca")
    serial = 1000
    for cert, key, ca, ca_key, name, extensions in (
            (pki.server_cert, pki.server_key, pki.ca, pki.ca_key, "localhost", "server"),
            (pki.client_cert, pki.client_key, pki.ca, pki.ca_key, "client", "client"),
            (pki.other_client_cert, pki.other_client_key, pki.other_ca, pki.other_ca_key,
             "client", "client"),
            (pki.renewed_server_cert, pki.renewed_server_key, pki.ca, pki.ca_key,
             "localhost", "server")):
        serial += 1
        request = cert + ".csr"
        _openssl(pki, "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-keyout", key, "-out", request,
                 "-subj", "/CN=" + name, "-config", config)
        _openssl(pki, "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
                 "-set_serial", str(serial), "-days", DAYS, "-out", cert,
                 "-extfile", config, "-extensions", extensions)
    with open(pki.garbage, "w") as handle:
        handle.write("-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n"
                     "-----END CERTIFICATE-----\n")
    return pki


def _openssl(pki, *args):
    process = subprocess.Popen(("openssl",) + args, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=pki.directory, universal_newlines=True)
    try:
        output, _ = process.communicate(timeout=OPENSSL_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("openssl %s did not finish" % args[0])
    if process.returncode != 0:
        raise AssertionError("openssl %s failed (%d):\n%s"
                             % (" ".join(args), process.returncode, output))
