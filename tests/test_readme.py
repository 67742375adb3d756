"""The README's examples, run for real.

Blocks the tests run are marked in README.md by `<!-- test: NAME -->` on the line before
the fenced block. The quick start runs in bash as a new user would paste it: HOME is a
fresh directory, `uscmdrelay` on PATH is the built dist/uscmdrelay.pyz, and the only
change made to the text is a free port in place of 7777. Every server started is stopped
by PID (or by the process group of the shell that started it) in a cleanup.
"""

import argparse
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

from tests import support
from uscmdrelay import cli, protocol

README = os.path.join(support.ROOT, "README.md")
SAMPLES = os.path.join(support.ROOT, "samples")
MARKED_BLOCK = re.compile(r"<!-- test: ([\w-]+) -->[ \t]*\n```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")
DATE = re.compile(r"\A\d{4}-\d\d-\d\d\Z")
README_PORT = "7777"
SCRIPT_TIMEOUT = 60.0
SUBCOMMANDS = ("configtest", "init", "call", "check", "hash-key", "import-nrpe")
# Variables that would change what a pasted block does.
CLEAN_ENV = ("USCMDRELAY_AUTH_KEY", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
             "LISTEN_FDNAMES", "JOURNAL_STREAM", "PYTHONPATH")


def readme_text():
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def readme_blocks():
    """{name: [block text, ...]} for every marked block of README.md."""
    blocks = {}
    for match in MARKED_BLOCK.finditer(readme_text()):
        blocks.setdefault(match.group(1), []).append(match.group(2))
    return blocks


def run_pyz(args, input_text=None, env=None):
    """Runs dist/uscmdrelay.pyz with `args`; returns (status, stdout, stderr)."""
    process = subprocess.run(support.command("pyz") + list(args), input=input_text,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, env=env or clean_environment(),
                             timeout=SCRIPT_TIMEOUT)
    return process.returncode, process.stdout, process.stderr


def clean_environment(**extra):
    env = dict((name, value) for name, value in os.environ.items() if name not in CLEAN_ENV)
    env.update(extra)
    return env


def need_programs(test, *names):
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        test.skipTest("not installed: %s" % ", ".join(missing))


def transcript(block):
    """Splits a `$ command` / output block into (commands, output lines)."""
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    output = [line for line in block.splitlines() if line and not line.startswith("$ ")]
    return commands, output


class ReadmeTestCase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.text = readme_text()
        cls.blocks = readme_blocks()

    def block(self, name):
        """The one README block marked `name`."""
        found = self.blocks.get(name, [])
        self.assertEqual(len(found), 1, "README.md needs exactly one block marked "
                                        "'<!-- test: %s -->'" % name)
        return found[0]

    def temp_dir(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-readme-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory


class QuickStartTest(ReadmeTestCase):
    """The quick start, pasted into bash by a new user."""

    def setUp(self):
        need_programs(self, "bash", "nc", "jq")
        for directory in ("/etc/uscmdrelay", "/etc/opt/uscmdrelay"):
            if os.path.exists(directory):
                self.skipTest("%s exists and would be used before ~/.config/uscmdrelay"
                              % directory)

    def test_quick_start_works_as_written_and_its_reply_is_a_success(self):
        start = self.block("quickstart")
        more = self.block("quickstart-more")
        stop = self.block("quickstart-stop")
        for block in (start, more):
            self.assertIn(README_PORT, block)
        self.assertIn("SERVER_PID", start)
        self.assertIn("SERVER_PID", stop)

        work = self.temp_dir()
        home = os.path.join(work, "home")
        bin_dir = os.path.join(work, "bin")
        os.mkdir(home)
        os.mkdir(bin_dir)
        # `uscmdrelay` is the built zipapp; its `#!/usr/bin/env python3` finds the
        # interpreter running this test first.
        os.symlink(support.PYZ, os.path.join(bin_dir, "uscmdrelay"))
        os.symlink(sys.executable, os.path.join(bin_dir, "python3"))
        pid_file = os.path.join(work, "server.pid")
        port = str(support.free_port())
        script = "\n".join([
            start.replace(README_PORT, port),
            'echo "$SERVER_PID" > "$README_TEST_PID_FILE"',    # added by the test
            more.replace(README_PORT, port),
            stop,
            'wait "$SERVER_PID"; echo "server exit status: $?"',  # added by the test
        ])
        stdout_path = os.path.join(work, "stdout")
        stderr_path = os.path.join(work, "stderr")
        env = clean_environment(HOME=home, README_TEST_PID_FILE=pid_file,
                                PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            shell = subprocess.Popen(["bash", "-c", script], cwd=work, env=env,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True)
        self.addCleanup(self._stop_everything, shell, pid_file)
        try:
            shell.wait(SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("the quick start did not finish in %g s:\n%s"
                      % (SCRIPT_TIMEOUT, self._read(stdout_path) + self._read(stderr_path)))
        stdout, stderr = self._read(stdout_path), self._read(stderr_path)
        context = "stdout:\n%s\nstderr:\n%s" % (stdout, stderr)

        self.assertIn("Config OK", stdout, context)
        reply, rest = self._first_json(stdout, context)
        self.assertEqual(reply["status"], "success", context)
        self.assertEqual(reply["code"], 0, context)
        # The reply shown in the README, but for the duration.
        shown = json.loads(self.block("quickstart-reply"))
        self.assertEqual(list(reply), list(shown))
        for field in shown:
            if field != "duration_ms":
                self.assertEqual(reply[field], shown[field], field)

        # The more block's comments are what each of its commands prints.
        expected = [line[2:] for line in more.splitlines() if line.startswith("# ")]
        actual = rest.strip().splitlines()
        self.assertEqual(len(actual), len(expected) + 1, context)
        for want, got in zip(expected, actual):
            if DATE.match(want):
                self.assertRegex(got, DATE)
            else:
                self.assertEqual(got, want)
        self.assertEqual(actual[-1], "server exit status: 0", context)

        self.assertIn("listening on 127.0.0.1 port %s" % port, stderr)
        self.assertIn('key="created by uscmdrelay init" command="default::echo" '
                      'arguments=["hello", "world"] code=0', stderr)
        auth_path = os.path.join(home, ".config", "uscmdrelay", "auth.conf")
        self.assertEqual(stat.S_IMODE(os.stat(auth_path).st_mode), 0o600)
        with open(auth_path, encoding="utf-8") as handle:
            key = re.search(r"^\[(.+)\]$", handle.read(), re.M).group(1)
        self.assertGreaterEqual(len(key), 32)
        self.assertNotIn(key, stderr)

    @staticmethod
    def _read(path):
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def _first_json(self, text, context):
        """The first pretty-printed JSON object in `text`, and the text after it."""
        match = re.search(r"^\{$", text, re.M)
        self.assertIsNotNone(match, "no reply printed by jq\n" + context)
        value, end = json.JSONDecoder().raw_decode(text, match.start())
        return value, text[end:]

    def _stop_everything(self, shell, pid_file):
        # The server was started with `&` by a non-interactive bash: it is in the shell's
        # process group, which start_new_session made its own.
        if shell.poll() is None:
            try:
                os.killpg(shell.pid, signal.SIGKILL)
            except OSError:
                pass
            shell.wait()
        try:
            with open(pid_file) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return
        if _is_uscmdrelay(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _is_uscmdrelay(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def _is_uscmdrelay(pid):
    """True while `pid` is a live (not zombie) process running uscmdrelay."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and b"uscmdrelay" in cmdline


class CommandLineDocumentedTest(ReadmeTestCase):

    def help_flags(self, args):
        status, stdout, stderr = run_pyz(list(args) + ["--help"])
        # A plugin answers --help with UNKNOWN (3), as check_nrpe does.
        self.assertEqual(status, 3 if args == ("check",) else 0, stderr)
        return sorted(set(FLAG.findall(stdout)))

    def test_every_flag_of_every_help_appears_in_the_readme(self):
        for args in [()] + [(name,) for name in SUBCOMMANDS]:
            flags = self.help_flags(args)
            self.assertIn("--help", flags)
            for flag in flags:
                with self.subTest(command=" ".join(args) or "uscmdrelay", flag=flag):
                    self.assertRegex(self.text, r"(?<![\w-])%s(?![\w-])" % re.escape(flag))

    def test_every_subcommand_appears_in_the_readme(self):
        status, stdout, _ = run_pyz(["--help"])
        listed = re.search(r"\{([a-z,-]+)\}", stdout).group(1).split(",")
        self.assertEqual(sorted(listed), sorted(SUBCOMMANDS))
        for name in listed:
            self.assertIn("`%s" % name, self.text)

    def server_flag_rows(self):
        """The rows of the README's table of server flags."""
        table = self.text.split("\n| flag | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
        return table.splitlines()[1:]

    def test_server_flag_table_has_a_row_per_flag_with_its_default(self):
        rows = self.server_flag_rows()
        for action in cli.build_parser()._actions:
            flags = [flag for flag in action.option_strings if flag.startswith("--")]
            if not flags or flags[0] == "--help":
                continue
            flag = flags[0]
            with self.subTest(flag=flag):
                row = [line for line in rows
                       if re.match(r"\| `%s[ `]" % re.escape(flag), line)]
                self.assertEqual(len(row), 1, "no table row for %s" % flag)
                default = action.default
                if (default in (None, False, argparse.SUPPRESS)
                        or not isinstance(default, (int, float, str))):
                    continue
                text = "%g" % default if isinstance(default, float) else str(default)
                self.assertIn("| `%s` |" % text, row[0])

    def test_usage_block_matches_the_real_usage(self):
        usage = self.text.split("\n```\nusage: uscmdrelay ", 1)[1].split("```", 1)[0]
        _, stdout, _ = run_pyz(["--help"])
        real = stdout.split("usage: uscmdrelay ", 1)[1].split("\n\n", 1)[0]
        self.assertEqual(" ".join(usage.split()), " ".join(real.split()))


class CodesDocumentedTest(ReadmeTestCase):

    def table_codes(self):
        """The codes in the first column of the README's code table."""
        parts = self.text.split("\n| code | meaning |\n")
        self.assertEqual(len(parts), 2, "README.md needs one '| code | meaning |' table")
        table = parts[1].split("\n\n", 1)[0]
        return [int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)]

    def test_every_protocol_code_has_a_row_in_the_code_table(self):
        codes = self.table_codes()
        for code in sorted(protocol.CODES):
            with self.subTest(code=code):
                self.assertEqual(codes.count(code), 1)

    def test_code_table_lists_no_code_the_server_does_not_have(self):
        self.assertEqual(sorted(self.table_codes()), sorted(protocol.CODES))


class ConfigExamplesTest(ReadmeTestCase):

    def test_sample_config_files_pass_configtest_once_the_keys_are_replaced(self):
        directory = self.temp_dir()
        with open(os.path.join(SAMPLES, "auth.sample.conf"), encoding="utf-8") as handle:
            sample = handle.read()
        with open(os.path.join(directory, "auth.conf"), "w", encoding="utf-8") as handle:
            handle.write(sample.replace("replace-me-with-a-long-random-key",
                                        "Zq3vT7pW1xR8mL2nB5cY4dKs"))
        shutil.copy(os.path.join(SAMPLES, "relays.sample.conf"),
                    os.path.join(directory, "relays.conf"))
        os.chmod(os.path.join(directory, "auth.conf"), 0o600)
        status, stdout, stderr = run_pyz(["--config-dir", directory, "configtest"])
        self.assertEqual(status, 0, stderr)
        self.assertTrue(stdout.startswith("Config OK\n"), stdout)
        self.assertIn("keys: 3, clusters: 2,", stdout)
        self.assertNotIn("client arguments", stdout)

    def test_unguarded_arguments_warning_is_what_the_readme_shows(self):
        shown = [line for line in self.text.splitlines()
                 if line.startswith("warning: /etc/uscmdrelay/relays.conf: [default] date:")]
        self.assertEqual(len(shown), 1)
        auth = "[%s]\nauth_clusters = default\n" % support.KEY
        directory = support.make_config_dir(self, auth=auth,
                                            relays="[default]\ndate = date +%Y-%m-%d\n")
        status, stdout, stderr = run_pyz(["--config-dir", directory, "configtest"])
        self.assertEqual(status, 0, stderr)
        warnings = [line for line in stdout.splitlines() if line.startswith("warning: ")]
        self.assertEqual(warnings, [shown[0].replace("/etc/uscmdrelay", directory)])

    def test_readme_samples_are_linked_and_exist(self):
        for name in re.findall(r"\]\((samples/[^)]+)\)", self.text):
            with self.subTest(path=name):
                self.assertTrue(os.path.exists(os.path.join(support.ROOT, name)))

    def _check_error_example(self, auth=support.DEFAULT_AUTH, relays=None, auth_mode=None):
        directory = support.make_config_dir(self, auth=auth, relays=relays)
        if auth_mode is not None:
            os.chmod(os.path.join(directory, "auth.conf"), auth_mode)
        status, stdout, stderr = run_pyz(["--config-dir", directory, "configtest"])
        return directory, status, stderr

    def test_config_error_example_prints_what_the_readme_shows(self):
        directory, status, stderr = self._check_error_example(
            relays=self.block("config-error-relays"))
        commands, output = transcript(self.block("config-error-output"))
        self.assertEqual(commands, ["uscmdrelay configtest", "echo $?"])
        message, shown_status = output
        self.assertEqual(stderr.strip(),
                         message.replace("/etc/uscmdrelay", directory))
        self.assertEqual(status, int(shown_status))

    def test_auth_mode_error_example_prints_what_the_readme_shows(self):
        shown = [line for line in self.text.splitlines()
                 if line.startswith("Config error: /etc/uscmdrelay/auth.conf: mode 0644")]
        self.assertEqual(len(shown), 1)
        directory, status, stderr = self._check_error_example(
            relays=support.DEFAULT_RELAYS, auth_mode=0o644)
        self.assertEqual(status, 2)
        self.assertEqual(stderr.strip(), shown[0].replace("/etc/uscmdrelay", directory))

    def test_hash_key_example_prints_what_the_readme_shows(self):
        commands, output = transcript(self.block("hash-key"))
        match = re.match(r"echo '([^']+)' \| uscmdrelay hash-key\Z", commands[0])
        self.assertIsNotNone(match, commands)
        status, stdout, stderr = run_pyz(["hash-key"], input_text=match.group(1) + "\n")
        self.assertEqual(status, 0, stderr)
        self.assertEqual(stdout.splitlines(), output)

    def test_policy_example_is_valid_and_refuses_what_the_readme_shows(self):
        relays = self.block("policy-relays")
        auth = "[%s]\nauth_clusters = *\n" % support.KEY
        directory = support.make_config_dir(self, auth=auth, relays=relays)
        status, stdout, stderr = run_pyz(["--config-dir", directory, "configtest", "--list"])
        self.assertEqual(status, 0, stderr)
        self.assertIn("web::restart = systemctl restart --", stdout)
        # The 2007 reply shown under the example, for "web::restart mysql".
        shown = [line for line in self.text.splitlines()
                 if line.startswith("{") and "'mysql'" in line]
        self.assertEqual(len(shown), 1)
        server = support.start_server(self, config_dir=directory)
        reply = support.exchange(server.port, json.dumps(
            {"auth_key": support.KEY, "command": "web::restart",
             "arguments": ["mysql"]}).encode("utf-8") + b"\n")
        self.assertEqual(reply.decode("utf-8"), shown[0] + "\n")


class FirstHourExamplesTest(ReadmeTestCase):
    """Examples a new user follows first: configtest's summary, the refused placeholder,
    and the throwaway CA of the TLS section."""

    def test_configtest_example_prints_the_summary_of_what_init_writes(self):
        commands, output = transcript(self.block("configtest-output"))
        self.assertEqual(commands, ["uscmdrelay configtest"])
        directory = os.path.join(self.temp_dir(), "uscmdrelay")
        status, _, stderr = run_pyz(["init", "--config-dir", directory])
        self.assertEqual(status, 0, stderr)
        status, stdout, stderr = run_pyz(["--config-dir", directory, "configtest"])
        self.assertEqual(status, 0, stderr)
        shown = [line.replace("/home/me/.config/uscmdrelay", directory) for line in output]
        self.assertEqual(stdout.splitlines(), shown)

    def test_placeholder_key_error_is_what_the_readme_shows(self):
        shown = [line.rstrip(".").strip("`") for line in self.text.splitlines()
                 if "this key is a placeholder" in line]
        self.assertEqual(len(shown), 1)
        directory = support.make_config_dir(self, auth=self.block("auth-placeholder"),
                                            relays="[default]\nt = /bin/true\n")
        status, _, stderr = run_pyz(["--config-dir", directory, "configtest"])
        self.assertEqual(status, 2)
        self.assertEqual(stderr.strip(), shown[0].replace("/etc/uscmdrelay", directory))

    def test_tls_ca_recipe_makes_a_certificate_call_verifies(self):
        need_programs(self, "bash", "openssl")
        work = self.temp_dir()
        process = subprocess.run(["bash", "-e", "-c", self.block("tls-ca-recipe")],
                                 cwd=work, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 universal_newlines=True, env=clean_environment(),
                                 timeout=SCRIPT_TIMEOUT)
        self.assertEqual(process.returncode, 0, process.stdout)
        path = lambda name: os.path.join(work, name)  # noqa: E731
        for name in ("ca.key", "server.key"):
            self.assertEqual(stat.S_IMODE(os.stat(path(name)).st_mode), 0o600)
        auth = "[%s]\nauth_clusters = default\n" % support.KEY
        directory = support.make_config_dir(
            self, auth=auth, relays="[default]\necho = /bin/echo\necho.arg_pattern = \\w+\n")
        server = support.start_server(self, config_dir=directory, args=[
            "--tls-cert", path("server.pem"), "--tls-key", path("server.key")])
        for extra in ([], ["--tls-server-name", "relay.example.org"]):
            with self.subTest(extra=extra):
                call = subprocess.run(
                    support.command() + ["call", "--host", "127.0.0.1", "--port",
                                         str(server.port), "--tls-ca", path("ca.pem")]
                    + extra + ["echo", "over", "tls"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, universal_newlines=True,
                    env=clean_environment(USCMDRELAY_AUTH_KEY=support.KEY),
                    timeout=SCRIPT_TIMEOUT)
                self.assertEqual((call.returncode, call.stdout, call.stderr),
                                 (0, "over tls\n", ""))


class ShellExecExampleTest(ReadmeTestCase):
    """The `--shell-exec` example: `; rm -rf /` and `$(id)` arrive literally either way."""

    def setUp(self):
        need_programs(self, "bash", "nc", "jq")

    def run_example(self, args):
        directory = support.make_config_dir(self, relays=self.block("shell-exec-relays"))
        server = support.start_server(self, config_dir=directory, args=args)
        request = self.block("shell-exec-request")
        self.assertIn(README_PORT, request)
        process = subprocess.run(
            ["bash", "-c", request.replace(README_PORT, str(server.port))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            env=clean_environment(KEY=support.KEY), timeout=SCRIPT_TIMEOUT)
        self.assertEqual(process.returncode, 0, process.stderr)
        return process.stdout

    def test_without_shell_exec_the_reply_is_what_the_readme_shows(self):
        self.assertEqual(self.run_example([]), self.block("reply-without-shell"))

    def test_with_shell_exec_the_reply_is_what_the_readme_shows(self):
        shown = self.block("reply-with-shell").replace("web1", os.uname().nodename)
        self.assertEqual(self.run_example(["--shell-exec"]), shown)



class StreamExampleTest(ReadmeTestCase):
    """The streaming example: nc and jq print only the command's stdout."""

    def test_the_jq_idiom_prints_the_stdout_events(self):
        need_programs(self, "bash", "nc", "jq")
        fixture = os.path.join(support.FIXTURES, "live.py")
        directory = support.make_config_dir(self, relays="[default]\ndeploy = %s %s "
                                            "interleave 3\n" % (sys.executable, fixture))
        server = support.start_server(self, config_dir=directory)
        block = self.block("stream-jq")
        self.assertIn(README_PORT, block)
        process = subprocess.run(
            ["bash", "-c", block.replace(README_PORT, str(server.port))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            env=clean_environment(KEY=support.KEY), timeout=SCRIPT_TIMEOUT)
        self.assertEqual((process.returncode, process.stdout, process.stderr),
                         (0, "out 0\nout 1\nout 2\n", ""))

if __name__ == "__main__":
    unittest.main()
