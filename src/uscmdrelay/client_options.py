"""The options the client commands share (`call`, `check`): where the key comes from and
how to speak TLS, declared once so both spell and document them alike.

It imports nothing: the command line declares these options at every start without
loading the client itself.
"""

# Any of these means TLS, --tls or not: `--tls-ca ca.pem` alone once sent the key in
# clear text (issue 12).
TLS_VALUE_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name")
TLS_OPTIONS = tuple(flag[2:].replace("-", "_") for flag in TLS_VALUE_FLAGS)
# The options of this group that take a value (the word after them is that value).
VALUE_FLAGS = ("--key-file",) + TLS_VALUE_FLAGS


def add_key_and_tls_options(parser):
    """Adds --key-file and the TLS options to an argparse `parser`."""
    parser.add_argument("--key-file", metavar="FILE",
                        help="read the auth key from FILE (default: $USCMDRELAY_AUTH_KEY)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS (implied by any other --tls-* option)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="CA certificate(s) to verify the server with (default: the "
                             "system's)")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="client certificate's private key")
    parser.add_argument("--tls-server-name", metavar="NAME",
                        help="name to verify the server certificate against "
                             "(default: --host)")
