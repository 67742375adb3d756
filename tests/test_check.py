"""End-to-end tests of `uscmdrelay check`, the Nagios plugin, against a real server.

Each exit-state rule of the plugin API: 0-3 and stdout pass through (perfdata, long
output), anything else is UNKNOWN (or the -t state for timeouts) on one stdout line, never
255, a traceback or an empty stdout.
"""

import re
import unittest

from tests import support
from tests.support import KEY
from tests.test_client import closed_port, run_call, silent_listener

CHECK_RELAYS = r"""
[default]
ok = printf 'DISK OK - free space: / 3326 MB (56%%);| /=2643MB;5948;5958;0;5968\n/ 15272 MB (77%%);\n/boot 68 MB (69%%);\n'
ok.max_args = 0
warning = sh -c 'echo "LOAD WARNING - load average: 5.10|load1=5.1;4;6;0"; exit 1'
critical = sh -c 'echo "PROCS CRITICAL: 300 processes|procs=300;150;200;0"; exit 2'
unknown = sh -c 'echo "UNKNOWN - cannot read /proc"; exit 3'
four = sh -c 'echo "weird status"; exit 4'
killed = sh -c 'echo about to die; kill -KILL $$'
stderr-only = sh -c 'echo "CRITICAL: only on stderr" >&2; exit 2'
silent = true
missing = /nonexistent/check_thing
slow = sleep 30
slow.timeout = 1
args = printf '%s|%s\n' $ARG1$ $ARG2$
sleep = sleep $ARG1$
sleep.arg_pattern = [0-9]+
"""
SERVER_ARGS = ["--shutdown-timeout", "0"]


class CheckTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        support.start_class_server(cls, relays=CHECK_RELAYS, args=SERVER_ARGS)

    @classmethod
    def tearDownClass(cls):
        support.stop_class_server(cls)

    def check(self, *args, **kwargs):
        port = kwargs.pop("port", self.server.port)
        return run_call(self, ["-p", str(port)] + list(args), subcommand="check", **kwargs)

    def assertState(self, result, state, stdout):
        """Exit `state`, exactly `stdout` (a string, or a regex for a one-liner)."""
        self.assertEqual(result.returncode, state, result)
        if hasattr(stdout, "pattern"):
            self.assertRegex(result.stdout, stdout)
            self.assertEqual(result.stdout.count("\n"), 1, result)
        else:
            self.assertEqual(result.stdout, stdout)
        self.assertNotIn("Traceback", result.stderr)

    def assertOneLine(self, result, state, message):
        names = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
        self.assertState(result, state, re.compile(
            r"\A%s: uscmdrelay: %s\n\Z" % (names[state], message)))

    # -- pass-through -------------------------------------------------------------------

    def test_ok_passes_perfdata_and_long_output_through(self):
        self.assertState(self.check("-c", "ok"), 0,
                         "DISK OK - free space: / 3326 MB (56%);| /=2643MB;5948;5958;0;5968\n"
                         "/ 15272 MB (77%);\n/boot 68 MB (69%);\n")

    def test_warning_critical_and_unknown_pass_through(self):
        for command, state, line in (
                ("warning", 1, "LOAD WARNING - load average: 5.10|load1=5.1;4;6;0\n"),
                ("critical", 2, "PROCS CRITICAL: 300 processes|procs=300;150;200;0\n"),
                ("unknown", 3, "UNKNOWN - cannot read /proc\n")):
            with self.subTest(command=command):
                self.assertState(self.check("-c", command), state, line)

    def test_stderr_is_shown_when_stdout_is_empty(self):
        self.assertState(self.check("-c", "stderr-only"), 2, "CRITICAL: only on stderr\n")

    def test_no_output_at_all_still_prints_a_line(self):
        self.assertOneLine(self.check("-c", "silent"), 0,
                           "the command exited 0 and printed nothing")

    def test_arguments_after_a_reach_the_placeholders_literally(self):
        result = self.check("-c", "args", "-a", "-w 5; $(id)", "-c")
        self.assertState(result, 0, "-w 5; $(id)|-c\n")

    # -- UNKNOWN for what a plugin cannot say -----------------------------------------------

    def test_status_above_3_is_unknown_naming_the_status(self):
        self.assertState(self.check("-c", "four"), 3,
                         "UNKNOWN: uscmdrelay: the command exited with status 4 (a plugin "
                         "exits 0 to 3)\nweird status\n")

    def test_death_by_a_signal_is_unknown_naming_the_signal(self):
        self.assertState(self.check("-c", "killed"), 3,
                         "UNKNOWN: uscmdrelay: the command was killed by signal 9 "
                         "(SIGKILL)\nabout to die\n")

    def test_relay_errors_are_one_unknown_line_with_their_code(self):
        for args, key, message in (
                (["-c", "ok"], "wrong-key-0123456789abcdef", r"authentication failed \(code 1001\)"),
                (["-c", "nope"], KEY, r"unknown command .*nope.* \(code 2004\)"),
                (["-c", "args", "-a", "1"], KEY,
                 r"arguments not allowed .*takes at least 2 arguments, got 1 \(code 2007\)"),
                (["-c", "ok", "-a", "x"], KEY, r".*at most 0 arguments, got 1 \(code 2007\)"),
                (["-c", "missing"], KEY, r".* \(code 3002\)"),
                (["-c", "nope::ok"], KEY, r".* \(code 1002\)")):
            with self.subTest(args=args):
                self.assertOneLine(self.check(*args, key=key), 3, message)

    def test_connection_refused_and_tls_failure_are_unknown(self):
        self.assertOneLine(self.check("-c", "ok", port=closed_port(self)), 3,
                           r"cannot connect to 127\.0\.0\.1 port \d+: Connection refused")
        self.assertOneLine(self.check("--tls", "-c", "ok"), 3,
                           r"TLS with 127\.0\.0\.1 port \d+ failed: .*")

    def test_no_key_is_unknown(self):
        self.assertOneLine(self.check("-c", "ok", key=None), 3,
                           r"no auth key: set USCMDRELAY_AUTH_KEY or use --key-file FILE")

    # -- timeouts ---------------------------------------------------------------------------

    def test_command_timeout_reports_the_t_state(self):
        for args, state in (([], 2), (["-t", "20:ok"], 0), (["-t", "20:warning"], 1),
                            (["-t", "20:critical"], 2), (["-t", "20:unknown"], 3),
                            (["-t", "20:WARNING"], 1), (["-u", "-t", "20:warning"], 1)):
            with self.subTest(args=args):
                self.assertOneLine(self.check("-c", "slow", *args), state,
                                   r".*timed out.* \(code 3003\)")

    def test_client_timeout_reports_the_t_state_or_unknown_with_u(self):
        port = silent_listener(self)
        for args, state in ((["-t", "1"], 2), (["-t", "1:ok"], 0), (["-t", "1:warning"], 1),
                            (["-t", "1:unknown"], 3), (["-t", "1:critical", "-u"], 3),
                            (["-u", "-t", "1"], 3)):
            with self.subTest(args=args):
                self.assertOneLine(self.check("-c", "ok", *args, port=port), state,
                                   r"no reply from 127\.0\.0\.1 port \d+ within 1 s \(-t\)")

    def test_t_bounds_the_whole_check_against_a_slow_command(self):
        result = self.check("-c", "sleep", "-t", "1:warning", "-a", "20")
        self.assertOneLine(result, 1, r"no reply from .* within 1 s \(-t\)")
        self.assertLess(result.elapsed, 15)

    # -- usage ------------------------------------------------------------------------------

    def test_usage_errors_are_one_unknown_line(self):
        for args, message in (
                ([], r"usage: the following arguments are required: -c/--command"),
                (["-c", "ok", "-t", "5:maybe"], r"usage: argument -t/--timeout: .*STATE.*"),
                (["-c", "ok", "-t", "0"], r"usage: argument -t/--timeout: .*SECONDS.*"),
                (["-c", "ok", "--bogus"], r"usage: unrecognized arguments: --bogus"),
                (["-c", "ok", "-p", "70000"], r"usage: argument -p/--port: .*")):
            with self.subTest(args=args):
                self.assertOneLine(run_call(self, args, subcommand="check"), 3, message)


if __name__ == "__main__":
    unittest.main()
