"""The fail2ban samples, proven with the real `fail2ban-regex` (Debian's fail2ban) against
the audit lines of a real server: codes 1001 and 1003 match and capture the client's
address (IPv4 and IPv6), in the --log file and in the journal's form; successes, other
codes and a client that writes `code=1001` into its arguments never match. The jail file
is read by the real `fail2ban-client -d` (configuration dump, no daemon).
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from tests import support
from tests.test_client import can_bind_ipv6_loopback

SAMPLES = os.path.join(support.ROOT, "samples", "fail2ban")
FILTER = os.path.join(SAMPLES, "filter.d", "uscmdrelay.conf")
JAIL = os.path.join(SAMPLES, "jail.d", "uscmdrelay.conf")
SYSTEM_CONFIG = "/etc/fail2ban"
TOOL_TIMEOUT = 120.0
WAIT_SECONDS = 20.0
RESTRICTED_KEY = "restricted-key-0123456789abcdef"
AUTH = support.DEFAULT_AUTH + """
[{key}]
description = only from a documentation address
auth_clusters = default
allowed_hosts = 192.0.2.1, 2001:db8::1
""".format(key=RESTRICTED_KEY)
INJECTED = ["x code=1001 exit=- duration_ms=-", "y client=192.0.2.99:1 code=1003"]
AUDIT_CODE = re.compile(r" code=(\d+) exit=\S+ duration_ms=\S+(?: client_gone=true)?$")
LOG_LINE = re.compile(r"^(\d{4})-(\d\d)-(\d\d) (\d\d:\d\d:\d\d),\d+ [A-Z]+ (.*)$")
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class LoggingServer(support.ServerProcess):
    """A ServerProcess with `--log log_file`; log_text() reads that file (stdout and
    stderr, empty unless something goes wrong, stay in the config dir's server.log)."""

    def __init__(self, config_dir, log_file, args=()):
        self.log_file = log_file
        support.ServerProcess.__init__(self, config_dir,
                                       args=("--log", log_file) + tuple(args))

    def log_text(self):
        try:
            with open(self.log_file, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def start_logging_server(test, config_dir, log_file, args=()):
    """Starts a LoggingServer for `test` and stops it by PID in the test's cleanup."""
    server = LoggingServer(config_dir, log_file, args)
    test.addCleanup(server.stop)
    return server


def run(test, argv):
    """Runs a real tool; returns its stdout (fails `test` on a non-zero exit)."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
    try:
        out, err = process.communicate(timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        test.fail("%s did not finish" % argv[0])
    test.assertEqual(process.returncode, 0, "%s failed:\n%s%s" % (argv, out, err))
    return out


def as_journal(line, pid):
    """A --log line as fail2ban's systemd backend shows the same message from the journal:
    `HOST IDENTIFIER[PID]: MESSAGE` (the journal gives the date apart; this has it in
    syslog form, so fail2ban-regex reads it from a file)."""
    year, month, day, clock, message = LOG_LINE.match(line).groups()
    return "%s %2d %s relay1 python3[%d]: %s" % (MONTHS[int(month) - 1], int(day), clock,
                                                pid, message)


class Fail2banTest(unittest.TestCase):

    def setUp(self):
        if shutil.which("fail2ban-regex") is None:
            self.skipTest("fail2ban-regex is not installed (Debian: fail2ban)")
        common = os.path.join(SYSTEM_CONFIG, "filter.d", "common.conf")
        if not os.path.exists(common):
            self.skipTest("fail2ban's filter.d/common.conf is not installed")
        self.work = tempfile.mkdtemp(prefix="uscmdrelay-fail2ban-")
        self.addCleanup(shutil.rmtree, self.work, True)
        # The filter as installed: beside fail2ban's common.conf, which it includes.
        os.mkdir(os.path.join(self.work, "filter.d"))
        shutil.copy(common, os.path.join(self.work, "filter.d"))
        self.filter = shutil.copy(FILTER, os.path.join(self.work, "filter.d"))

    def traffic(self, host):
        """Starts a server on `host` with --log, sends 3 wrong keys, 2 requests with a
        key not allowed from here, and requests answered with other codes; returns the
        (audit lines, server PID) once all are logged."""
        config_dir = support.make_config_dir(self, auth=AUTH)
        log_file = os.path.join(config_dir, "audit.log")
        server = start_logging_server(self, config_dir, log_file, ("--host", host))
        port = server.port

        def ask(body):
            raw = (json.dumps(body) + "\n").encode() if isinstance(body, dict) else body
            return support.decode_reply(support.exchange(port, raw, host=host))["code"]
        codes = [ask({"auth_key": "wrong-key-0123456789abcdef", "command": "true"})
                 for _ in range(3)]
        codes += [ask({"auth_key": RESTRICTED_KEY, "command": "true"}) for _ in range(2)]
        codes += [ask({"auth_key": support.KEY, "command": "true"}),
                  ask({"auth_key": support.KEY, "command": "echo", "arguments": INJECTED}),
                  ask({"auth_key": support.KEY, "command": "fail"}),
                  ask({"auth_key": support.KEY, "command": "nope"}),
                  ask({"auth_key": support.OTHER_KEY, "command": "true"}),
                  ask(b"{not json\n")]
        self.assertEqual(codes, [1001] * 3 + [1003] * 2 + [0, 0, 3001, 2004, 1002, 2001])
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            lines = self.audit_lines(log_file)
            if len(lines) >= len(codes) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(sorted(int(AUDIT_CODE.search(line).group(1)) for line in lines),
                         sorted(codes))
        self.assertTrue(any("code=1001 exit=- duration_ms=-" in line and " code=0 " in line
                            for line in lines))  # the injected arguments are logged
        return lines, server.process.pid

    @staticmethod
    def audit_lines(path):
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle if AUDIT_CODE.search(line)]

    def matched(self, lines, logtype=None):
        """The hosts fail2ban-regex captures in `lines`, one per matching line, and the
        lines matched (each, without its date, as fail2ban shows it)."""
        path = os.path.join(self.work, "input-%d.log" % len(os.listdir(self.work)))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        spec = self.filter + ("[logtype=%s]" % logtype if logtype else "")
        hosts = run(self, ["fail2ban-regex", "--out", "ip", path, spec]).split()
        report = run(self, ["fail2ban-regex", "--print-all-matched", "--print-no-missed",
                            path, spec])
        return hosts, report

    def check(self, lines, address, logtype=None):
        hosts, report = self.matched(lines, logtype)
        self.assertEqual(hosts, [address] * 5, report)
        self.assertIn("Lines: %d lines, 0 ignored, 5 matched, %d missed"
                      % (len(lines), len(lines) - 5), report)
        bad = [line for line in lines
               if AUDIT_CODE.search(line).group(1) in ("1001", "1003")]
        for line in bad:
            self.assertIn(line.split(" client=", 1)[1], report)

    def test_ipv4_client_is_captured_from_the_log_file_and_the_journal(self):
        lines, pid = self.traffic("127.0.0.1")
        self.assertTrue(all(" client=127.0.0.1:" in line for line in lines))
        self.check(lines, "127.0.0.1")
        self.check([as_journal(line, pid) for line in lines], "127.0.0.1", "journal")

    def test_ipv6_client_in_brackets_is_captured_from_the_log_file_and_the_journal(self):
        if not can_bind_ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        lines, pid = self.traffic("::1")
        self.assertTrue(all(" client=[::1]:" in line for line in lines))
        self.check(lines, "::1")
        self.check([as_journal(line, pid) for line in lines], "::1", "journal")

    def test_the_jails_read_by_fail2ban_client(self):
        if shutil.which("fail2ban-client") is None:
            self.skipTest("fail2ban-client is not installed (Debian: fail2ban)")
        if not os.path.exists(os.path.join(SYSTEM_CONFIG, "jail.conf")):
            self.skipTest("fail2ban's jail.conf is not installed")
        config = os.path.join(self.work, "fail2ban")
        shutil.copytree(SYSTEM_CONFIG, config, symlinks=True)
        shutil.copy(FILTER, os.path.join(config, "filter.d"))
        log_file = os.path.join(self.work, "uscmdrelay.log")
        open(log_file, "w").close()
        with open(JAIL) as handle:
            jail = handle.read()
        # Only the log path and the switch of the file jail change, as a site would.
        jail = jail.replace("/var/log/uscmdrelay/uscmdrelay.log", log_file)
        jail = jail.replace("enabled  = false", "enabled  = true")
        with open(os.path.join(config, "jail.d", "uscmdrelay.conf"), "w") as handle:
            handle.write(jail)
        dump = run(self, ["fail2ban-client", "-c", config, "-d"])
        self.assertIn("['add', 'uscmdrelay', 'systemd']", dump)
        self.assertIn("['set', 'uscmdrelay', 'addjournalmatch', "
                      "'_SYSTEMD_UNIT=uscmdrelay.service']", dump)
        self.assertIn("['add', 'uscmdrelay-logfile', 'auto']", dump)
        self.assertIn("['set', 'uscmdrelay-logfile', 'addlogpath', %r, 'head']" % log_file,
                      dump)
        for jail_name in ("uscmdrelay", "uscmdrelay-logfile"):
            self.assertIn("['set', '%s', 'maxretry', 5]" % jail_name, dump)
            self.assertRegex(dump, r"\['set', '%s', 'addfailregex', '[^\n]*code=\(\?:1001"
                                   r"\|1003\)" % jail_name)
            self.assertIn("--dports 7777 -j f2b-%s" % jail_name, dump)


if __name__ == "__main__":
    unittest.main()
