"""Tests for uscmdrelay.slots: the places connections take against --max-connections and
--max-connections-per-host. Plain objects stand in for sockets: the table only needs
something hashable."""

import unittest

import tests  # noqa: F401  (puts src/ on sys.path)
from uscmdrelay.slots import ConnectionSlots, host_key


class HostKeyTests(unittest.TestCase):

    def test_the_key_is_the_address_with_mapped_ipv4_as_ipv4(self):
        for address, key in ((("192.0.2.1", 4000), "192.0.2.1"),
                             (("2001:db8::1", 4000, 0, 0), "2001:db8::1"),
                             (("::ffff:192.0.2.1", 4000, 0, 0), "192.0.2.1"),
                             (("::ffff:1", 4000, 0, 0), "::ffff:1"),
                             (None, ""), ("", "")):
            with self.subTest(address=address):
                self.assertEqual(host_key(address), key)


class ConnectionSlotsTests(unittest.TestCase):

    def test_the_total_limit_refuses_then_a_release_lets_one_in(self):
        slots = ConnectionSlots(2, 0)
        first, second = object(), object()
        slots.take(first, ("192.0.2.1", 1))
        slots.take(second, ("192.0.2.2", 1))
        self.assertEqual(slots.refusal(("192.0.2.3", 1)),
                         "server busy: --max-connections (2) reached")
        slots.release(first)
        self.assertIsNone(slots.refusal(("192.0.2.3", 1)))
        self.assertEqual(len(slots), 1)

    def test_the_per_host_limit_counts_all_ports_and_mapped_addresses_together(self):
        slots = ConnectionSlots(10, 2)
        slots.take(object(), ("192.0.2.1", 1))
        slots.take(object(), ("::ffff:192.0.2.1", 2, 0, 0))
        self.assertEqual(slots.refusal(("192.0.2.1", 3)), "server busy: "
                         "--max-connections-per-host (2) reached for 192.0.2.1")
        self.assertIsNone(slots.refusal(("192.0.2.2", 3)))
        self.assertEqual(slots.count(("::ffff:192.0.2.1", 9, 0, 0)), 2)

    def test_zero_means_no_per_host_limit(self):
        slots = ConnectionSlots(100, 0)
        for port in range(50):
            slots.take(object(), ("192.0.2.1", port))
        self.assertIsNone(slots.refusal(("192.0.2.1", 99)))

    def test_release_is_once_and_a_sock_that_holds_no_place_is_fine(self):
        slots = ConnectionSlots(10, 1)
        sock = object()
        slots.take(sock, ("192.0.2.1", 1))
        for _ in range(3):
            slots.release(sock)
        slots.release(object())
        self.assertEqual((len(slots), slots.count(("192.0.2.1", 1))), (0, 0))
        self.assertIsNone(slots.refusal(("192.0.2.1", 2)))
        self.assertEqual(slots._per_host, {})  # no empty counts left behind


if __name__ == "__main__":
    unittest.main()
