"""The command line: flags, configtest, exit codes and one-line failures."""

import ast
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
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
            (["--max-output", "1073741825"], "--max-output"),
            (["--max-request", "0"], "--max-request"),
            (["--max-request", "16777217"], "--max-request"),
            (["--timeout", "-1"], "--timeout"),
            (["--timeout", "nan"], "--timeout"),
            (["--timeout", "inf"], "--timeout"),
            (["--timeout", "604801"], "--timeout"),
            (["--request-timeout", "0"], "--request-timeout"),
            (["--request-timeout", "2592000"], "--request-timeout"),
            (["--shutdown-timeout", "1e12"], "--shutdown-timeout"),
            (["--shutdown-timeout", "-1"], "--shutdown-timeout"),
            (["--max-connections", "0"], "--max-connections"),
            (["--max-connections", "65537"], "--max-connections"),
            (["--log-level", "LOUD"], "--log-level"),
        ]
        for args, flag in cases:
            with self.subTest(args=args):
                result = run_cli(args + ["configtest"])
                self.assertEqual((result.returncode, result.stdout), (2, ""))
                # One line, no usage block (issue 12: user errors are one line).
                self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
                self.assertTrue(result.stderr.startswith(
                    "uscmdrelay: error: argument %s: " % flag), result.stderr)
                self.assertNotIn("Traceback", result.stderr)

    def test_durations_and_sizes_name_their_range(self):
        for flag, value, problem in (
                ("--timeout", "inf", "is out of range (0 to 604800)"),
                ("--request-timeout", "2592000", "is out of range (0.001 to 604800)"),
                ("--shutdown-timeout", "nan", "is out of range (0 to 604800)"),
                ("--max-output", "1073741825", "is out of range (0 to 1073741824)"),
                ("--max-request", "16777217", "is out of range (1 to 16777216)"),
                ("--max-connections", "65537", "is out of range (1 to 65536)"),
                ("--port", "70000", "is out of range (0 to 65535)")):
            with self.subTest(flag=flag, value=value):
                result = run_cli([flag, value, "configtest"], "src")
                self.assertEqual(result.stderr, "uscmdrelay: error: argument %s: %r %s\n"
                                 % (flag, value, problem))

    def test_the_largest_values_allowed_are_accepted(self):
        directory = support.make_config_dir(self)
        result = run_cli(["--config-dir", directory, "--timeout", "604800",
                          "--request-timeout", "604800", "--shutdown-timeout", "604800",
                          "--max-output", "1073741824", "--max-request", "16777216",
                          "--max-connections", "65536", "configtest"])
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_help_states_the_largest_duration(self):
        result = run_cli(["--help"])
        self.assertEqual(result.returncode, 0)
        self.assertIn("604800", result.stdout)
        self.assertIn("7 days", result.stdout)


class ServerOptionsTest(unittest.TestCase):
    """The flags and server.Options read one table (options.SERVER_OPTIONS)."""

    def test_flag_defaults_are_the_server_defaults(self):
        from uscmdrelay.cli import build_parser
        from uscmdrelay.options import SERVER_OPTIONS, Options
        parsed = Options.from_args(build_parser().parse_args([]))
        default = Options()
        for option in SERVER_OPTIONS:
            with self.subTest(option=option.name):
                self.assertEqual(getattr(parsed, option.name), option.default)
                self.assertEqual(getattr(default, option.name), option.default)

    def test_every_bound_of_the_table_is_the_flags_bound(self):
        from uscmdrelay.cli import build_parser
        from uscmdrelay.options import SERVER_OPTIONS
        parser = build_parser()
        for option in SERVER_OPTIONS:
            if option.kind is None:
                continue
            with self.subTest(option=option.name):
                largest = parser.parse_args([option.flag, str(option.maximum)])
                self.assertEqual(getattr(largest, option.name), option.maximum)
                with self.assertRaises(SystemExit), support.quiet_stderr():
                    parser.parse_args([option.flag, str(option.maximum + 1)])

    def test_an_unknown_option_is_a_type_error(self):
        from uscmdrelay.options import Options
        with self.assertRaises(TypeError):
            Options(max_conections=3)


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
        # Someone who copied only the .pyz has no samples/: the exact command to run.
        init_here = "/etc/uscmdrelay" if os.geteuid() == 0 else "~/.config/uscmdrelay"
        self.assertEqual(result.stderr, "Config error: no configuration found: none of "
                         "/etc/uscmdrelay, /etc/opt/uscmdrelay, ~/.config/uscmdrelay holds "
                         "auth.conf or relays.conf; write a first one with 'uscmdrelay init "
                         "--config-dir %s', or pass --config-dir DIR\n" % init_here)


# No warning at start-up: a failed start prints its one line and nothing else.
CLEAN_RELAYS = ("[default]\ntrue = /bin/true\ntrue.max_args = 0\n"
                "[ops]\nuptime = /bin/true\nuptime.max_args = 0\n")


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


class ArgumentWarningLoggedTest(unittest.TestCase):
    """The unguarded-arguments warning reaches configtest, the start-up log and a reload."""

    RELAYS = "[default]\nuptime = uptime\nuptime.max_args = 0\ndate = date +%Y-%m-%d\n"
    AUTH = "[%s]\nauth_clusters = default\n" % support.KEY

    @staticmethod
    def warning(directory, name):
        return ("%s/relays.conf: [default] %s: client arguments are appended unguarded (an "
                "argument such as '-f FILE' becomes an option); set {0}.max_args = 0, or end "
                "the command line with '--' and set {0}.arg_pattern or {0}.arg_choices"
                .format(name) % (directory, name))

    def test_configtest_prints_the_warning_and_still_passes(self):
        directory = support.make_config_dir(self, auth=self.AUTH, relays=self.RELAYS)
        result = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        warnings = [line for line in result.stdout.splitlines()
                    if line.startswith("warning: ")]
        self.assertEqual(warnings, ["warning: " + self.warning(directory, "date")])

    def test_server_logs_it_at_warning_at_start_up_and_on_reload(self):
        directory = support.make_config_dir(self, auth=self.AUTH, relays=self.RELAYS)
        server = support.start_server(self, config_dir=directory)
        log_line = " WARNING config: " + self.warning(directory, "date") + "\n"
        self.assertIn(log_line, server.log_text())
        self.assertNotIn("uptime: client arguments", server.log_text())
        with open(os.path.join(directory, "relays.conf"), "a") as handle:
            handle.write("echo = echo\n")
        start = len(server.log_text())
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + support.START_TIMEOUT
        while ("configuration reloaded" not in server.log_text()[start:]
               and time.monotonic() < deadline):
            time.sleep(0.02)
        after = server.log_text()[start:]
        self.assertIn("configuration reloaded", after)
        self.assertIn(log_line, after)
        self.assertIn(" WARNING config: " + self.warning(directory, "echo") + "\n", after)


def init_dir(test):
    """A path for `init` to create, in a fresh parent removed in `test`'s cleanup."""
    parent = tempfile.mkdtemp(prefix="uscmdrelay-init-")
    test.addCleanup(shutil.rmtree, parent, True)
    return os.path.join(parent, "conf")


def init_key(directory):
    """The (plain) key init wrote to DIRECTORY/auth.conf."""
    with open(os.path.join(directory, "auth.conf"), encoding="utf-8") as handle:
        return re.search(r"^\[(.+)\]$", handle.read(), re.M).group(1)


class InitConfigSafetyTest(unittest.TestCase):
    """What `init` writes is safe to serve as it is."""

    def test_init_config_refuses_date_dash_f_reading_auth_conf(self):
        # GNU `date -f FILE` prints each line of FILE it cannot parse: with client
        # arguments appended to `date +%Y-%m-%d`, a key holder could read every key.
        directory = init_dir(self)
        result = run_cli(["init", "--config-dir", directory])
        self.assertEqual(result.returncode, 0, result.stderr)
        key = init_key(directory)
        auth_path = os.path.join(directory, "auth.conf")
        server = support.start_server(self, config_dir=directory)
        for arguments in (["-f", auth_path], ["--file=" + auth_path]):
            with self.subTest(arguments=arguments):
                reply = support.request(server.port, auth_key=key, command="date",
                                        arguments=arguments)
                self.assertEqual(reply["code"], 2007, reply)
                self.assertNotIn(key, json.dumps(reply))
        reply = support.request(server.port, auth_key=key, command="date")
        self.assertEqual(reply["code"], 0, reply)
        self.assertRegex(reply["message"], r"\A\d{4}-\d\d-\d\d\Z")

    def test_init_config_echo_takes_words_but_no_options(self):
        directory = init_dir(self)
        self.assertEqual(run_cli(["init", "--config-dir", directory]).returncode, 0)
        key = init_key(directory)
        server = support.start_server(self, config_dir=directory)
        reply = support.request(server.port, auth_key=key, command="echo",
                                arguments=["hello", "world"])
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello world\n"), reply)
        for arguments in (["--help"], ["-e", "\\x41"], ["hi", "--version"]):
            with self.subTest(arguments=arguments):
                reply = support.request(server.port, auth_key=key, command="echo",
                                        arguments=arguments)
                self.assertEqual(reply["code"], 2007, reply)
        for command in ("uptime", "date"):
            with self.subTest(command=command):
                reply = support.request(server.port, auth_key=key, command=command,
                                        arguments=["--help"])
                self.assertEqual(reply["code"], 2007, reply)


# Runs `setup` (Python code), then execs the rest of argv: how a test gives init a umask
# or a file size limit of its own.
EXEC_AFTER = "import os, sys\n%s\nos.execv(sys.argv[1], sys.argv[1:])"


def run_init_after(setup, directory, program="pyz"):
    """Runs `uscmdrelay init --config-dir DIRECTORY` after `setup`; CompletedProcess."""
    argv = support.command(program)
    return subprocess.run(
        [argv[0], "-c", EXEC_AFTER % setup] + argv + ["init", "--config-dir", directory],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60, env=support.environment(program))


class InitFilesTest(unittest.TestCase):
    """init writes through descriptors, into a directory that only its user controls, and
    leaves nothing behind when it fails."""

    def mode(self, *parts):
        return stat.S_IMODE(os.lstat(os.path.join(*parts)).st_mode)

    def test_modes_are_exact_whatever_the_umask(self):
        for umask in (0o077, 0o000, 0o777):
            with self.subTest(umask=oct(umask)):
                directory = init_dir(self)
                result = run_init_after("os.umask(%d)" % umask, directory)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual((self.mode(directory), self.mode(directory, "auth.conf"),
                                  self.mode(directory, "relays.conf")),
                                 (0o700, 0o600, 0o644))

    @unittest.skipUnless(hasattr(sys, "addaudithook"), "audit hooks are Python 3.8+")
    def test_modes_are_set_on_the_descriptor_never_by_path(self):
        # chmod by path after open follows a symlink swapped in meanwhile, changing the
        # mode of any file the user owns. os.fchmod raises the same "os.chmod" audit
        # event as os.chmod, with a descriptor instead of a path.
        directory = init_dir(self)
        code = ("import sys\nevents = []\n"
                "sys.addaudithook(lambda event, args: events.append(args[0])"
                " if event == 'os.chmod' else None)\n"
                "from uscmdrelay.init_config import write_config\n"
                "write_config(sys.argv[1])\nprint(repr(events))\n")
        result = subprocess.run(
            [sys.executable, "-c", code, directory], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=60, env=support.environment("src"))
        self.assertEqual(result.returncode, 0, result.stderr)
        targets = ast.literal_eval(result.stdout.strip())
        if not targets:
            self.skipTest("this interpreter raises no os.chmod audit events")
        self.assertEqual([type(target) for target in targets], [int] * len(targets),
                         targets)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give a directory away")
    def test_existing_directory_of_another_user_is_refused(self):
        directory = init_dir(self)
        os.mkdir(directory, 0o700)
        os.chown(directory, 65534, 65534)
        owner = "%s (uid 65534)" % _user_name(65534) if _user_name(65534) else "uid 65534"
        result = run_cli(["init", "--config-dir", directory])
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr, "uscmdrelay: cannot write into %s: it belongs to %s, "
                         "not to root (uid 0); run chown root %s, or choose another "
                         "--config-dir\n" % (directory, owner, directory))
        self.assertEqual(os.listdir(directory), [])

    def test_existing_directory_others_may_write_to_is_refused(self):
        for mode in (0o777, 0o1777, 0o720, 0o702):
            with self.subTest(mode=oct(mode)):
                directory = init_dir(self)
                os.mkdir(directory)
                os.chmod(directory, mode)
                result = run_cli(["init", "--config-dir", directory])
                self.assertEqual((result.returncode, result.stdout), (1, ""))
                self.assertEqual(result.stderr, "uscmdrelay: cannot write into %s: mode "
                                 "%04o lets group or others write to it; run chmod go-w %s, "
                                 "or choose another --config-dir\n"
                                 % (directory, mode, directory))
                self.assertEqual(os.listdir(directory), [])
        directory = init_dir(self)
        os.mkdir(directory, 0o750)
        os.chmod(directory, 0o750)
        self.assertEqual(run_cli(["init", "--config-dir", directory]).returncode, 0)

    def test_failing_to_write_relays_conf_leaves_nothing_behind(self):
        # A file size limit between the sizes of the two files: auth.conf is written,
        # relays.conf fails (EFBIG, as a full disk fails with ENOSPC). Python ignores
        # SIGXFSZ, so the write returns the error instead of killing the process.
        from uscmdrelay import init_config
        auth_size = len(init_config.AUTH_TEMPLATE.format(key="k" * 43).encode("utf-8"))
        relays_size = len(init_config.RELAYS_TEMPLATE.encode("utf-8"))
        self.assertLess(auth_size + 20, relays_size)
        limit = "import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d))" % (
            auth_size + 20, auth_size + 20)
        for existing in (False, True):
            with self.subTest(existing_directory=existing):
                directory = init_dir(self)
                if existing:
                    os.mkdir(directory, 0o700)
                result = run_init_after(limit, directory)
                self.assertEqual((result.returncode, result.stdout), (1, ""))
                self.assertEqual(result.stderr, "uscmdrelay: cannot write %s: File too "
                                 "large\n" % os.path.join(directory, "relays.conf"))
                # A directory init made is gone; one that was there stays, empty.
                self.assertEqual(os.path.exists(directory), existing)
                if existing:
                    self.assertEqual(os.listdir(directory), [])


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


if __name__ == "__main__":
    unittest.main()
