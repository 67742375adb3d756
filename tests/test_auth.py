"""Unit tests for uscmdrelay.auth: key lookup, source addresses, cluster grants and the
order of the checks.

The configuration is a real one loaded from a temporary directory; requests go through the
real parser.
"""

import hashlib
import json
import unittest

from tests import support
from uscmdrelay import auth, config, protocol
from uscmdrelay.protocol import RelayError

CI_KEY = "ci-key-0123456789abcdefghij"        # default, ops and 'ghost' (not defined)
STAR_KEY = "star-key-0123456789abcdefghij"    # '*', no description
OPS_KEY = "ops-key-0123456789abcdefghij"      # ops only
LAN_KEY = "lan-key-0123456789abcdefghij"      # default, only from 10.0.0.0/8 and ::1
UNKNOWN_KEY = "unknown-key-0123456789abcdef"

AUTH_TEXT = """\
[{ci}]
description = ci runner
auth_clusters = default, ops, ghost

[{star}]
auth_clusters = *

[{ops}]
description = ops team
auth_clusters = ops

[{lan}]
description = lan only
auth_clusters = default
allowed_hosts = 10.0.0.0/8, ::1
""".format(ci=CI_KEY, star=STAR_KEY, ops=OPS_KEY, lan=LAN_KEY)

RELAYS_TEXT = """\
[default]
echo = echo hello
true = /bin/true

[ops]
up = uptime -p

[backup]
status = systemctl is-active backup.service
"""

KEYS = (CI_KEY, STAR_KEY, OPS_KEY, LAN_KEY, UNKNOWN_KEY)
CLIENT = "127.0.0.1"


def make_request(auth_key, command):
    data = json.dumps({"auth_key": auth_key, "command": command}) + "\n"
    return protocol.parse_request(data.encode("utf-8"))


class AuthorizeTest(unittest.TestCase):

    def setUp(self):
        directory = support.make_config_dir(self, auth=AUTH_TEXT, relays=RELAYS_TEXT)
        self.config = config.load_config(directory, shell_exec=True)

    # (key, command, expected code); the checks run in the order key, cluster grant,
    # cluster, command, so each row also pins which failure wins when several apply.
    DENIALS = [
        (UNKNOWN_KEY, "echo", 1001),
        (UNKNOWN_KEY, "nosuch::echo", 1001),
        (UNKNOWN_KEY, "backup::nope", 1001),
        (CI_KEY.upper(), "echo", 1001),
        (CI_KEY + " ", "echo", 1001),
        (CI_KEY[:-1], "echo", 1001),
        ("x", "echo", 1001),
        (OPS_KEY, "echo", 1002),                 # default exists, not granted
        (OPS_KEY, "default::nope", 1002),        # not granted beats unknown command
        (OPS_KEY, "backup::status", 1002),
        (OPS_KEY, "nosuch::echo", 1002),         # not granted, whether or not it exists
        (CI_KEY, "backup::status", 1002),
        (CI_KEY, "nosuch::x", 1002),
        (CI_KEY, "Default::echo", 1002),         # cluster names are case-sensitive
        (STAR_KEY, "nosuch::echo", 2003),
        (STAR_KEY, "Default::echo", 2003),
        (CI_KEY, "ghost::echo", 2003),           # granted, but relays.conf lacks it
        (CI_KEY, "nope", 2004),
        (CI_KEY, "ECHO", 2004),                  # command names are case-sensitive
        (CI_KEY, "ops::echo", 2004),
        (STAR_KEY, "backup::up", 2004),
        (OPS_KEY, "ops::nope", 2004),
    ]

    def test_denials_get_their_code_in_check_order(self):
        for key, command, code in self.DENIALS:
            with self.subTest(key=key, command=command):
                with self.assertRaises(RelayError) as caught:
                    auth.authorize(self.config, make_request(key, command), CLIENT)
                self.assertEqual(caught.exception.code, code, str(caught.exception))
                for secret in KEYS:
                    self.assertNotIn(secret, caught.exception.message)
                    self.assertNotIn(secret, str(caught.exception))

    # (key, command, client address, expected code): the source address is checked right
    # after the key, before anything that depends on the request's command.
    ADDRESS_DENIALS = [
        (UNKNOWN_KEY, "echo", "192.0.2.1", 1001),      # a bad key is a bad key anywhere
        (LAN_KEY, "echo", "192.0.2.1", 1003),
        (LAN_KEY, "echo", "", 1003),                   # no address known: not allowed
        (LAN_KEY, "echo", "::2", 1003),
        (LAN_KEY, "echo", "::ffff:192.0.2.1", 1003),   # IPv4-mapped is the IPv4 address
        (LAN_KEY, "ops::up", "192.0.2.1", 1003),       # address beats cluster grant
        (LAN_KEY, "nosuch::x", "192.0.2.1", 1003),     # ... and unknown cluster
        (LAN_KEY, "nope", "192.0.2.1", 1003),          # ... and unknown command
        (LAN_KEY, "::list", "192.0.2.1", 1003),        # ... and the listing
        (LAN_KEY, "ops::up", "10.1.2.3", 1002),        # allowed address: next check
        (LAN_KEY, "nope", "::1", 2004),
    ]

    def test_source_address_is_checked_right_after_the_key(self):
        for key, command, address, code in self.ADDRESS_DENIALS:
            with self.subTest(key=key, command=command, address=address):
                with self.assertRaises(RelayError) as caught:
                    auth.authorize(self.config, make_request(key, command), address)
                self.assertEqual(caught.exception.code, code, str(caught.exception))
                # Past the key check the refusal still says which key asked (audit).
                expected = None if code == 1001 else "lan only"
                grant = caught.exception.grant
                self.assertEqual(grant and grant.label, expected)

    def test_allowed_address_runs_and_lists(self):
        for address in ("10.0.0.1", "::1", "::ffff:10.9.9.9"):
            with self.subTest(address=address):
                decision = auth.authorize(self.config, make_request(LAN_KEY, "echo"),
                                          address)
                self.assertIs(decision.relay, self.config.clusters["default"]["echo"])
                listing = auth.authorize(self.config, make_request(LAN_KEY, "::list"),
                                         address)
                self.assertIsNone(listing.relay)
                self.assertEqual([command.full_name for command in listing.listing],
                                 ["default::echo", "default::true"])

    def test_messages(self):
        cases = [(UNKNOWN_KEY, "echo", "authentication failed"),
                 (OPS_KEY, "backup::status", "this key may not use cluster 'backup'"),
                 (STAR_KEY, "nosuch::x", "unknown cluster 'nosuch'"),
                 (CI_KEY, "nope", "unknown command 'nope' in cluster 'default'")]
        for key, command, message in cases:
            with self.subTest(command=command):
                with self.assertRaises(RelayError) as caught:
                    auth.authorize(self.config, make_request(key, command), CLIENT)
                self.assertEqual(caught.exception.message, message)

    def test_not_granted_reply_does_not_reveal_whether_the_cluster_exists(self):
        replies = []
        for cluster in ("backup", "nosuch"):
            with self.assertRaises(RelayError) as caught:
                auth.authorize(self.config, make_request(OPS_KEY, cluster + "::status"),
                               CLIENT)
            replies.append((caught.exception.code,
                            caught.exception.message.replace(cluster, "CLUSTER")))
        self.assertEqual(replies[0], replies[1])
        self.assertEqual(replies[0][0], 1002)

    def test_success_returns_the_command_and_the_grant_label(self):
        cases = [(CI_KEY, "echo", "default", "echo", ["echo", "hello"], "ci runner"),
                 (CI_KEY, "default::true", "default", "true", ["/bin/true"], "ci runner"),
                 (CI_KEY, "ops::up", "ops", "up", ["uptime", "-p"], "ci runner"),
                 (OPS_KEY, "ops::up", "ops", "up", ["uptime", "-p"], "ops team"),
                 (STAR_KEY, "backup::status", "backup", "status",
                  ["systemctl", "is-active", "backup.service"],
                  config.key_fingerprint(STAR_KEY)),
                 (STAR_KEY, "echo", "default", "echo", ["echo", "hello"],
                  config.key_fingerprint(STAR_KEY))]
        for key, command, cluster, name, argv, label in cases:
            with self.subTest(key=key, command=command):
                decision = auth.authorize(self.config, make_request(key, command), CLIENT)
                self.assertIs(decision.relay, self.config.clusters[cluster][name])
                self.assertEqual((decision.relay.cluster, decision.relay.name,
                                  decision.relay.argv), (cluster, name, argv))
                self.assertEqual(decision.grant.label, label)
                self.assertNotIn(key, decision.grant.label)

    def test_fingerprint_label_is_sha256_of_the_key(self):
        label = auth.authenticate(self.config, STAR_KEY).label
        self.assertEqual(label, "sha256:" + hashlib.sha256(
            STAR_KEY.encode("utf-8")).hexdigest()[:12])

    def test_authenticate(self):
        self.assertEqual(auth.authenticate(self.config, OPS_KEY).label, "ops team")
        self.assertEqual(auth.authenticate(self.config, OPS_KEY).clusters,
                         frozenset(["ops"]))
        self.assertEqual(auth.authenticate(self.config, STAR_KEY).clusters, "*")
        for key in (UNKNOWN_KEY, "", OPS_KEY.upper(), " " + OPS_KEY):
            with self.subTest(key=key):
                with self.assertRaises(RelayError) as caught:
                    auth.authenticate(self.config, key)
                self.assertEqual(caught.exception.code, 1001)

    def test_unicode_keys(self):
        key = "cl\u00e9-\u2603-0123456789abcdef"
        directory = support.make_config_dir(
            self, auth="[%s]\ndescription = unicode\nauth_clusters = default\n" % key,
            relays=RELAYS_TEXT)
        loaded = config.load_config(directory, shell_exec=True)
        self.assertEqual(auth.authorize(loaded, make_request(key, "echo"), CLIENT)
                         .grant.label, "unicode")
        with self.assertRaises(RelayError) as caught:
            auth.authorize(loaded, make_request("cle\u0301-\u2603-0123456789abcdef",
                                                "echo"), CLIENT)
        self.assertEqual(caught.exception.code, 1001)


if __name__ == "__main__":
    unittest.main()
