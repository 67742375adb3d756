"""reasons.reason: the one line of an exception a user sees, the same on CPython and PyPy."""

import configparser
import os
import ssl
import unittest

from tests import support
from uscmdrelay.reasons import reason


class ReasonTest(unittest.TestCase):

    def test_each_kind_of_error_gives_its_one_line(self):
        cases = [
            (FileNotFoundError(2, "No such file or directory", "/x"),
             "No such file or directory"),
            (configparser.Error("bad section\nmore detail"), "bad section"),
            (ValueError("first line\nsecond line"), "first line"),
            (ValueError(""), "ValueError"),
            (OSError("timed out"), "timed out"),
        ]
        for error, expected in cases:
            with self.subTest(error=repr(error)):
                self.assertEqual(reason(error), expected)

    def test_an_ssl_error_gives_its_short_reason_on_every_interpreter(self):
        # PyPy's ssl errors come from another module (_cffi_ssl): told by class.
        directory = support.make_config_dir(self, auth=None, relays=None)
        path = os.path.join(directory, "not-a-ca.pem")
        with open(path, "w") as handle:
            handle.write("not a certificate\n")
        context = ssl.create_default_context()
        with self.assertRaises(ssl.SSLError) as caught:
            context.load_verify_locations(cafile=path)
        error = caught.exception
        # Python 3.6's ssl leaves .reason empty for this one: then strerror's line.
        self.assertEqual(reason(error), error.reason or error.strerror.splitlines()[0])
        if error.reason:
            self.assertEqual(reason(error), "NO_CERTIFICATE_OR_CRL_FOUND")


if __name__ == "__main__":
    unittest.main()
