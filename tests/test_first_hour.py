"""What a new sysadmin tripped over in the first hour (issue 18): a missing config dir, a
mistyped subcommand, the sample's placeholder keys, warnings that Ansible's validate: let
through (`configtest --strict`, `--as`), a `cwd` that does not exist, a world-readable
log file, a key echoed at the terminal, and `call --list` showing `0-0`.
"""

import io
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest

from tests import support
from uscmdrelay import client

SAMPLES = os.path.join(support.ROOT, "samples")
# Nothing for configtest to warn about.
CLEAN_RELAYS = "[default]\ntrue = /bin/true\ntrue.max_args = 0\n"
CLEAN_AUTH = "[%s]\nauth_clusters = default\n" % support.KEY


def run_cli(args, env=None, timeout=60):
    """Runs the .pyz with `args`; returns the CompletedProcess (text)."""
    return subprocess.run(support.command() + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout,
                          env=support.environment(extra=env))


def temp_dir(test):
    directory = tempfile.mkdtemp(prefix="uscmdrelay-first-hour-")
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


class MissingConfigDirTest(unittest.TestCase):

    def test_a_config_dir_that_does_not_exist_is_named_as_such(self):
        missing = os.path.join(temp_dir(self), "etc", "uscmdrelay")
        expected = ("Config error: %s: the config dir does not exist; check --config-dir, "
                    "or write a first configuration there with 'uscmdrelay init "
                    "--config-dir %s'\n" % (missing, missing))
        for args in (["--config-dir", missing, "configtest"],
                     ["--config-dir", missing, "--host", "127.0.0.1", "--port", "0"]):
            with self.subTest(args=args):
                result = run_cli(args)
                self.assertEqual((result.returncode, result.stderr), (2, expected))


class UnknownCommandTest(unittest.TestCase):

    def test_a_mistyped_subcommand_gets_one_line_naming_the_likely_one(self):
        for args in (["confgtest"], ["--port", "7000", "confgtest", "--list"]):
            with self.subTest(args=args):
                result = run_cli(args)
                self.assertEqual((result.returncode, result.stdout), (2, ""))
                self.assertEqual(result.stderr,
                                 "uscmdrelay: unknown command 'confgtest' (did you mean "
                                 "'configtest'?)\nTry 'uscmdrelay --help'.\n")

    def test_a_word_like_no_subcommand_lists_them(self):
        result = run_cli(["frobnicate"])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr, "uscmdrelay: unknown command 'frobnicate' (commands: "
                         "configtest, init, call, check, import-nrpe, hash-key)\nTry "
                         "'uscmdrelay --help'.\n")

    def test_calls_command_word_is_still_the_remote_command(self):
        result = run_cli(["call", "confgtest", "--list"], env={"USCMDRELAY_AUTH_KEY": ""})
        self.assertNotIn("unknown command", result.stderr)
        self.assertIn("no auth key", result.stderr)


class PlaceholderKeyTest(unittest.TestCase):

    def configtest(self, auth, *args):
        directory = support.make_config_dir(self, auth=auth, relays=CLEAN_RELAYS)
        return directory, run_cli(["--config-dir", directory, "configtest"] + list(args))

    def test_the_samples_placeholder_keys_are_refused_by_fingerprint(self):
        with open(os.path.join(SAMPLES, "auth.sample.conf"), encoding="utf-8") as handle:
            sample = handle.read()
        directory, result = self.configtest(sample)
        first = re.search(r"^\[(replace-me[^\]]*)\]$", sample, re.M).group(1)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr,
                         "Config error: %s/auth.conf: [key %s]: this key is a placeholder "
                         "from the sample, not a secret; replace the section name with a "
                         "long random key, or its hash ('uscmdrelay hash-key --generate' "
                         "prints both)\n"
                         % (directory, _fingerprint(first)))
        self.assertNotIn(first, result.stderr)

    def test_any_key_containing_replace_me_is_refused(self):
        _, result = self.configtest("[my-key-REPLACE-ME-0123456789]\nauth_clusters = *\n")
        self.assertEqual(result.returncode, 2)
        self.assertIn("this key is a placeholder", result.stderr)

    def test_a_short_key_warning_says_how_to_make_a_long_one(self):
        directory, result = self.configtest("[short]\nauth_clusters = default\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: %s/auth.conf: [key %s] the key is shorter than 16 "
                      "characters; use a long random key ('uscmdrelay hash-key --generate' "
                      "makes one)\n" % (directory, _fingerprint("short")), result.stdout)


def _fingerprint(key):
    from uscmdrelay.fingerprint import key_fingerprint
    return key_fingerprint(key)


class StrictTest(unittest.TestCase):

    def test_strict_turns_each_warning_into_an_error_line_and_exit_2(self):
        auth = "[%s]\nauth_clusters = default, defualt\n" % support.KEY
        directory = support.make_config_dir(self, auth=auth, relays=CLEAN_RELAYS)
        relaxed = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual(relaxed.returncode, 0, relaxed.stderr)
        result = run_cli(["--config-dir", directory, "configtest", "--strict"])
        self.assertEqual((result.returncode, result.stdout), (2, ""))
        self.assertEqual(result.stderr, "Config error: %s/auth.conf: [key %s] auth_clusters: "
                         "cluster 'defualt' is not defined in any relays file\n"
                         % (directory, _fingerprint(support.KEY)))

    def test_strict_passes_a_config_without_warnings(self):
        directory = support.make_config_dir(self, auth=CLEAN_AUTH, relays=CLEAN_RELAYS)
        result = run_cli(["--config-dir", directory, "configtest", "--strict"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("Config OK\n"))
        self.assertNotIn("warning", result.stdout)

    def test_strict_with_a_file_fails_on_that_files_warnings_only(self):
        # No auth.conf yet (deployed later): a warning about it, not an error.
        directory = support.make_config_dir(self, auth=None, relays=None)
        new = os.path.join(temp_dir(self), "new.conf")
        with open(new, "w") as handle:
            handle.write(CLEAN_RELAYS)
        result = run_cli(["--config-dir", directory, "configtest", "--strict",
                          "--relays", new])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: %s/auth.conf: not there (yet)" % directory, result.stdout)
        with open(new, "a") as handle:
            handle.write("now = date\n")
        result = run_cli(["--config-dir", directory, "configtest", "--strict",
                          "--relays", new])
        self.assertEqual(result.returncode, 2)
        self.assertRegex(result.stderr, r"\AConfig error: %s: \[default\] now: client "
                                        r"arguments are appended unguarded" % re.escape(new))
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)


class ConfigtestAsTest(unittest.TestCase):
    """`--as NAME`: the file is named NAME in messages, and checked where NAME says."""

    def setUp(self):
        self.directory = support.make_config_dir(self, auth=CLEAN_AUTH, relays=CLEAN_RELAYS)
        os.mkdir(os.path.join(self.directory, "relays.d"), 0o755)
        self.temp = os.path.join(temp_dir(self), "tmpXYZ_ansible")

    def check(self, text, *args):
        with open(self.temp, "w") as handle:
            handle.write(text)
        return run_cli(["--config-dir", self.directory, "configtest", "--relays",
                        self.temp] + list(args))

    def test_errors_name_the_installed_path_not_the_temporary_file(self):
        for name, shown in (("relays.d/web.conf", self.directory + "/relays.d/web.conf"),
                            (self.directory + "/relays.d/web.conf",
                             self.directory + "/relays.d/web.conf"),
                            ("relays.conf", self.directory + "/relays.conf")):
            with self.subTest(name=name):
                result = self.check("[web]\nrun = tar 'open\n", "--as", name)
                self.assertEqual((result.returncode, result.stderr),
                                 (2, "Config error: %s: [web] run: No closing quotation\n"
                                  % shown))

    def test_a_drop_in_path_implies_dropin_and_warnings_name_it_too(self):
        result = self.check("[web]\nnow = date\n", "--as", "relays.d/web.conf")
        self.assertEqual(result.returncode, 0, result.stderr)
        shown = self.directory + "/relays.d/web.conf"
        self.assertIn("files: %s/relays.conf, %s, %s/auth.conf\n"
                      % (self.directory, shown, self.directory), result.stdout)
        self.assertIn("warning: %s: [web] now: client arguments" % shown, result.stdout)
        self.assertNotIn(self.temp, result.stdout)
        # As a drop-in, [default] clashes with relays.conf's, named by its path.
        result = self.check("[default]\nx = /bin/true\nx.max_args = 0\n", "--as",
                            "relays.d/web.conf")
        self.assertEqual(result.stderr, "Config error: %s: [default] is already defined in "
                         "%s/relays.conf\n" % (shown, self.directory))
        strict = self.check("[web]\nnow = date\n", "--as", "relays.d/web.conf", "--strict")
        self.assertEqual(strict.returncode, 2)
        self.assertTrue(strict.stderr.startswith("Config error: %s: [web] now: " % shown))

    def test_a_name_outside_the_config_dirs_places_is_refused(self):
        result = self.check(CLEAN_RELAYS, "--as", "conf.d/web.conf")
        self.assertEqual((result.returncode, result.stderr), (2, (
            "Config error: --as conf.d/web.conf: the file checked is installed as "
            "relays.conf or as relays.d/NAME.conf (NAME not starting with '.') in %s; give "
            "one of those\n" % self.directory)))

    def test_as_needs_one_file_and_no_dropin(self):
        for args in (["--as", "relays.d/a.conf", "--dropin"],
                     ["--as", "auth.conf", "--auth", self.temp]):
            with self.subTest(args=args):
                result = self.check(CLEAN_RELAYS, *args)
                self.assertEqual((result.returncode, result.stderr), (2, (
                    "uscmdrelay: --as goes with one --relays FILE or --auth FILE, without "
                    "--dropin (--as relays.d/NAME is the drop-in NAME)\n")))

    def test_auth_as_names_the_auth_file(self):
        os.chmod(self.directory, 0o700)
        path = os.path.join(temp_dir(self), "tmp_auth")
        with open(path, "w") as handle:
            handle.write("[replace-me-please-0123456789]\nauth_clusters = *\n")
        os.chmod(path, 0o600)
        result = run_cli(["--config-dir", self.directory, "configtest", "--auth", path,
                          "--as", "auth.conf"])
        self.assertEqual(result.returncode, 2)
        self.assertTrue(result.stderr.startswith(
            "Config error: %s/auth.conf: [key " % self.directory), result.stderr)


class WorkingDirectoryTest(unittest.TestCase):

    def test_a_cwd_that_is_not_a_directory_is_a_warning(self):
        place = temp_dir(self)
        missing = os.path.join(place, "srv", "www")
        a_file = os.path.join(place, "file")
        open(a_file, "w").close()
        relays = ("[web]\ndeploy = /bin/true\ndeploy.max_args = 0\ndeploy.cwd = %s\n"
                  "build = /bin/true\nbuild.max_args = 0\nbuild.cwd = %s\n"
                  "ok = /bin/true\nok.max_args = 0\nok.cwd = %s\n" % (missing, a_file, place))
        auth = "[%s]\nauth_clusters = web\n" % support.KEY
        directory = support.make_config_dir(self, auth=auth, relays=relays)
        result = run_cli(["--config-dir", directory, "configtest"])
        self.assertEqual(result.returncode, 0, result.stderr)
        warnings = [line for line in result.stdout.splitlines() if line.startswith("warn")]
        self.assertEqual(warnings, [
            "warning: %s/relays.conf: [web] build.cwd: %r is not a directory; create it or "
            "fix the path (each request would fail with code 3002)" % (directory, a_file),
            "warning: %s/relays.conf: [web] deploy.cwd: %r does not exist; create it or "
            "fix the path (each request would fail with code 3002)" % (directory, missing)])


class LogFileModeTest(unittest.TestCase):

    def start(self, log_path, umask):
        """A server logging to `log_path`, started under `umask`; returns its port."""
        directory = support.make_config_dir(self, auth=CLEAN_AUTH, relays=CLEAN_RELAYS)
        process = subprocess.Popen(
            ["sh", "-c", 'umask %s && exec "$@"' % umask, "sh"] + support.command() + [
                "--config-dir", directory, "--host", "127.0.0.1", "--port", "0",
                "--log", log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=support.environment())
        self.addCleanup(support.stop_process, process)
        text = self.wait_for(log_path, "listening on", process)
        return int(support.LISTENING.search(text).group(2))

    def wait_for(self, path, text, process):
        """Waits until `text` is in the file `path`; returns the file's text."""
        deadline = time.monotonic() + support.START_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    content = handle.read()
                if text in content:
                    return content
            if process.poll() is not None:
                self.fail("the server exited with %s" % process.returncode)
            time.sleep(0.05)
        self.fail("%r never appeared in %s" % (text, path))

    def test_a_new_log_file_is_0640_or_what_a_stricter_umask_leaves(self):
        for umask, mode in (("022", 0o640), ("077", 0o600), ("000", 0o640)):
            with self.subTest(umask=umask):
                log_path = os.path.join(temp_dir(self), "uscmdrelay.log")
                self.start(log_path, umask)
                self.assertEqual(stat.S_IMODE(os.stat(log_path).st_mode), mode)

    def test_an_existing_log_files_mode_is_left_alone(self):
        log_path = os.path.join(temp_dir(self), "uscmdrelay.log")
        open(log_path, "w").close()
        os.chmod(log_path, 0o644)
        self.start(log_path, "022")
        self.assertEqual(stat.S_IMODE(os.stat(log_path).st_mode), 0o644)

    def test_the_file_reopened_after_a_rotation_is_0640(self):
        log_path = os.path.join(temp_dir(self), "uscmdrelay.log")
        port = self.start(log_path, "022")
        os.rename(log_path, log_path + ".1")
        reply = support.request(port, command="true")
        self.assertEqual(reply["code"], 0, reply)
        deadline = time.monotonic() + support.REPLY_TIMEOUT
        while not os.path.exists(log_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(stat.S_IMODE(os.stat(log_path).st_mode), 0o640)


class HashKeyAtATerminalTest(unittest.TestCase):

    def test_the_key_typed_at_a_terminal_is_not_echoed(self):
        key = "typed-secret-0123456789"
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        try:
            process = subprocess.Popen(
                support.command() + ["hash-key"], stdin=slave, stdout=subprocess.PIPE,
                stderr=slave, env=support.environment(), start_new_session=True)
        finally:
            os.close(slave)
        self.addCleanup(_kill, process)
        screen = _read_until(master, b"Key (not echoed): ")
        os.write(master, key.encode("ascii") + b"\n")
        stdout = process.communicate(timeout=60)[0].decode("utf-8")
        screen += _read_until(master, None)
        self.assertEqual(process.returncode, 0, screen)
        self.assertEqual(stdout, "[%s]\n" % _hashed(key))
        self.assertNotIn(key.encode("ascii"), screen)

    def test_a_key_piped_in_is_read_as_before(self):
        result = subprocess.run(support.command() + ["hash-key"], input="k\n",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "[%s]\n" % _hashed("k"), ""))


def _hashed(key):
    from uscmdrelay.fingerprint import hashed_key_section
    return hashed_key_section(key)


def _read_until(fd, wanted, timeout=30.0):
    """Reads the terminal `fd` until `wanted` has been seen (None: until it closes)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted is not None and wanted in seen:
            return seen
        ready = select.select([fd], [], [], 0.1)[0]
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the other side is closed
                return seen
            if not data:
                return seen
            seen += data
    if wanted is None:
        return seen
    raise AssertionError("%r never appeared on the terminal: %r" % (wanted, seen))


def _kill(process):
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


class ListCountTest(unittest.TestCase):

    def test_a_command_taking_no_arguments_shows_none(self):
        out = io.StringIO()
        client._print_list([
            {"command": "default::date", "min_args": None, "max_args": 0},
            {"command": "default::zero", "min_args": 0, "max_args": 0},
            {"command": "default::one", "min_args": 1, "max_args": 1},
            {"command": "default::some", "min_args": None, "max_args": 3},
            {"command": "default::echo", "min_args": None, "max_args": None},
        ], out)
        counts = [line.split()[1] for line in out.getvalue().splitlines()[1:]]
        self.assertEqual(counts, ["none", "none", "1", "0-3", "any"])


class SampleUnitDocumentationTest(unittest.TestCase):

    def test_the_documentation_file_is_one_the_install_steps_install(self):
        with open(os.path.join(SAMPLES, "uscmdrelay.sample.service")) as handle:
            text = handle.read()
        documentation = re.findall(r"^Documentation=file://(\S+)$", text, re.M)
        self.assertEqual(len(documentation), 1, text)
        self.assertRegex(text, r"(?m)^#\s+install .*README\.md %s$"
                         % re.escape(documentation[0]))


if __name__ == "__main__":
    unittest.main()
