"""The command line: flags, configtest, exit codes and one-line failures."""

import os
import shutil
import socket
import subprocess
import tempfile
import unittest

from tests import support


def run_cli(args, program="pyz", env=None, timeout=60):
    """Runs uscmdrelay with `args`; returns the CompletedProcess (text)."""
    return subprocess.run(support.command(program) + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout,
                          env=support.environment(program, env))


class FlagsTest(unittest.TestCase):

    def test_version_prints_name_and_version(self):
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                result = run_cli(["--version"], program)
                self.assertEqual(result.returncode, 0)
                self.assertRegex(result.stdout, r"^uscmdrelay \d+\.\d+\.\d+\n$")

    def test_version_alone_prints_what_argparse_prints(self):
        # `--version` alone is answered by __main__ before argparse is imported; with
        # another flag before it, argparse answers. Both must print the same.
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                alone = run_cli(["--version"], program)
                parsed = run_cli(["--log-level", "INFO", "--version"], program)
                self.assertEqual((parsed.returncode, parsed.stderr), (0, ""))
                self.assertEqual((alone.returncode, alone.stdout, alone.stderr),
                                 (0, parsed.stdout, ""))

    def test_help_lists_every_flag(self):
        result = run_cli(["--help"])
        self.assertEqual(result.returncode, 0)
        for flag in ("--host", "--port", "--log", "--log-level", "--shell-exec", "--version",
                     "--config-dir", "--timeout", "--max-output", "--max-request",
                     "--request-timeout", "--max-connections", "configtest"):
            self.assertIn(flag, result.stdout)

    def test_bad_values_are_refused_with_a_clear_message(self):
        cases = [
            (["--port", "70000"], "--port"),
            (["--port", "-1"], "--port"),
            (["--port", "http"], "--port"),
            (["--max-output", "-5"], "--max-output"),
            (["--max-request", "0"], "--max-request"),
            (["--timeout", "-1"], "--timeout"),
            (["--timeout", "nan"], "--timeout"),
            (["--request-timeout", "0"], "--request-timeout"),
            (["--max-connections", "0"], "--max-connections"),
            (["--log-level", "LOUD"], "--log-level"),
        ]
        for args, flag in cases:
            with self.subTest(args=args):
                result = run_cli(args + ["configtest"])
                self.assertEqual(result.returncode, 2)
                self.assertIn("argument %s" % flag, result.stderr)
                self.assertNotIn("Traceback", result.stderr)


class ConfigtestTest(unittest.TestCase):

    def test_valid_config_prints_ok_and_a_summary(self):
        directory = support.make_config_dir(self)
        result = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "Config OK")
        self.assertIn("config dir: %s" % directory, lines)
        self.assertIn("keys: 2, clusters: 3, commands: 9", lines)
        # relays.conf names /nonexistent/program; auth.conf grants nothing undefined.
        self.assertIn("warning: %s/relays.conf: [default] missing: '/nonexistent/program' "
                      "is not an executable file" % directory, lines)

    def test_warns_about_a_granted_cluster_that_is_not_defined(self):
        auth = "[%s]\nauth_clusters = default, nosuch\n" % support.KEY
        directory = support.make_config_dir(self, auth=auth, relays="[default]\nt = true\n")
        result = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("auth_clusters: cluster 'nosuch' is not defined in any relays file",
                      result.stdout)
        self.assertNotIn(support.KEY, result.stdout + result.stderr)

    def test_invalid_config_is_one_line_and_exit_2(self):
        directory = support.make_config_dir(self, relays="[backup]\nrun = tar 'unbalanced\n")
        for program in ("pyz", "src"):
            with self.subTest(program=program):
                result = run_cli(["--config-dir", directory, "configtest"], program)
                self.assertEqual(result.returncode, 2)
                self.assertEqual(result.stderr, "Config error: %s/relays.conf: [backup] run: "
                                 "No closing quotation\n" % directory)

    def test_group_readable_auth_file_is_refused(self):
        directory = support.make_config_dir(self)
        path = os.path.join(directory, "auth.conf")
        os.chmod(path, 0o640)
        result = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr, "Config error: %s: mode 0640 lets group or others "
                         "access the keys; run chmod 600 %s\n" % (path, path))

    def test_config_is_found_in_the_users_config_dir(self):
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home)
        if any(os.path.isdir(d) for d in ("/etc/uscmdrelay", "/etc/opt/uscmdrelay")):
            self.skipTest("a system-wide config exists on this machine")
        config_dir = os.path.join(home, ".config", "uscmdrelay")
        os.makedirs(config_dir)
        support.write_config(config_dir)
        result = run_cli(["configtest"], env={"HOME": home})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("config dir: %s" % config_dir, result.stdout)

    def test_no_config_anywhere_lists_the_places_searched(self):
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home)
        if any(os.path.isdir(d) for d in ("/etc/uscmdrelay", "/etc/opt/uscmdrelay")):
            self.skipTest("a system-wide config exists on this machine")
        result = run_cli(["configtest"], env={"HOME": home})
        self.assertEqual(result.returncode, 2)
        self.assertTrue(result.stderr.startswith("Config error: no configuration found: "))
        for place in ("/etc/uscmdrelay", "/etc/opt/uscmdrelay", "~/.config/uscmdrelay",
                      "--config-dir"):
            self.assertIn(place, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1)


CLEAN_RELAYS = "[default]\ntrue = /bin/true\n[ops]\nuptime = /bin/true\n"


class StartupFailureTest(unittest.TestCase):

    def test_bad_config_stops_the_server_with_exit_2(self):
        directory = support.make_config_dir(self, relays="[default]\nx =\n")
        result = run_cli(["--config-dir", directory, "--port", "0"])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr, "Config error: %s/relays.conf: [default] x: empty "
                         "command\n" % directory)

    def test_unknown_host_is_one_line_and_exit_1(self):
        directory = support.make_config_dir(self, relays=CLEAN_RELAYS)
        result = run_cli(["--config-dir", directory, "--host", "no-such-host.invalid",
                          "--port", "0"])
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("uscmdrelay: cannot listen on "
                                                 "no-such-host.invalid port 0: "),
                        result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_port_in_use_is_one_line_and_exit_1(self):
        directory = support.make_config_dir(self, relays=CLEAN_RELAYS)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = run_cli(["--config-dir", directory, "--host", "127.0.0.1",
                              "--port", str(port)])
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "uscmdrelay: cannot listen on 127.0.0.1 port %d: "
                         "Address already in use\n" % port)

    def test_unwritable_log_file_is_one_line_and_exit_1(self):
        directory = support.make_config_dir(self, relays=CLEAN_RELAYS)
        log_file = os.path.join(directory, "no-such-dir", "uscmdrelay.log")
        result = run_cli(["--config-dir", directory, "--port", "0", "--log", log_file])
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "uscmdrelay: cannot open log file %s: No such file or "
                         "directory\n" % log_file)


if __name__ == "__main__":
    unittest.main()
