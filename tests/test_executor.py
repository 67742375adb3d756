"""Tests for executor.run and executor.build_argv with real child processes.

Every child is a small program under tests/fixtures/ (run with sys.executable) or a
system tool; nothing is mocked. Processes a fixture leaves behind are stopped by PID in a
cleanup, and only after checking that the PID still belongs to them.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

from tests import support

if support.SRC not in sys.path:
    sys.path.insert(0, support.SRC)

from uscmdrelay import executor, spawn, streaming  # noqa: E402
from uscmdrelay.config import Command  # noqa: E402
from uscmdrelay.eventloop import Loop  # noqa: E402
from uscmdrelay.protocol import COMMAND_NOT_STARTED, RelayError  # noqa: E402

# A safety net only: a child that should finish on its own gets this long before the
# executor kills it, so a hang shows up as a failed assertion instead of a stuck suite.
SAFETY_TIMEOUT_SECONDS = 20.0
# How long a process we expect dead may take to disappear (or become a zombie).
DEATH_WAIT_SECONDS = 5.0
# Shell metacharacters, quotes and whitespace that must reach the command literally.
TRICKY_ARGUMENTS = [
    "; touch injected-semicolon",
    "$(touch injected-dollar)",
    "`touch injected-backtick`",
    "' ; touch injected-single-quote ; '",
    '" ; touch injected-double-quote ; "',
    "a b  c",
    "line one\nline two",
    "*",
    "",
    "-n",
    "$HOME",
    "back\\slash",
    "~",
    "&& touch injected-and",
    "| touch injected-pipe",
    "> injected-redirect",
    "tab\there",
    "caf\u00e9",
]


def fixture(name):
    return os.path.join(support.FIXTURES, name)


def python_fixture(name, *arguments):
    """The argv that runs fixture `name` with this interpreter."""
    return [sys.executable, fixture(name)] + list(arguments)


def pattern(size, reverse=False):
    """The bytes tests/fixtures/flood.py writes: 0..255 repeated (255..0 if reverse)."""
    unit = bytes(bytearray(range(256)))
    if reverse:
        unit = unit[::-1]
    return (unit * (size // 256 + 1))[:size]


def _process_state(pid):
    """The state letter from /proc/PID/stat, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except (IOError, OSError):
        return None
    # The command name is in parentheses and may hold spaces: the state follows the last ')'.
    return stat[stat.rindex(")") + 2]


def _is_gone(pid):
    """True when `pid` is not running: no such process, or a zombie awaiting its reaper.

    A killed grandchild is reparented, so reaping it is not ours to do; a zombie is dead.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _process_state(pid) in (None, "Z")


def wait_until_gone(pid, limit=DEATH_WAIT_SECONDS):
    """Returns True once `pid` is gone (see _is_gone), False if it still runs at `limit`."""
    deadline = time.monotonic() + limit
    while True:
        if _is_gone(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except (IOError, OSError):
        return b""


def kill_if_ours(pid, marker):
    """SIGKILLs `pid` if it still runs a command line containing `marker` (bytes).

    The marker check keeps a cleanup from hitting an unrelated process that reused the PID.
    """
    if marker in _cmdline(pid) and not _is_gone(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_pid(path):
    """The pid a fixture wrote to `path`, or None if it never did."""
    try:
        with open(path) as handle:
            return int(handle.read())
    except (IOError, OSError, ValueError):
        return None


class ExecutorTestCase(unittest.TestCase):

    def make_temp_dir(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-executor-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def pid_file(self, marker):
        """A path for a fixture to write a helper's pid to; that helper is killed in cleanup
        (if it still runs something matching `marker`)."""
        path = os.path.join(self.make_temp_dir(), "pid")

        def stop():
            pid = read_pid(path)
            if pid is not None:
                kill_if_ours(pid, marker)
        self.addCleanup(stop)
        return path

    def run_timed(self, argv, **kwargs):
        """Runs executor.run; returns (outcome, seconds it took)."""
        kwargs.setdefault("timeout", SAFETY_TIMEOUT_SECONDS)
        started = time.monotonic()
        outcome = executor.run(argv, **kwargs)
        return outcome, time.monotonic() - started

    def assertStartFails(self, argv, program):
        with self.assertRaises(RelayError) as caught:
            executor.run(argv, timeout=SAFETY_TIMEOUT_SECONDS)
        self.assertEqual(caught.exception.code, COMMAND_NOT_STARTED)
        self.assertIn(program, str(caught.exception.message))


class ExitStatusAndStreams(ExecutorTestCase):

    def test_exit_status_is_returned_as_exit_code(self):
        for status in (0, 1, 3, 127, 255):
            with self.subTest(status=status):
                outcome, _ = self.run_timed(python_fixture("streams.py", "", "", str(status)))
                self.assertEqual(outcome.exit_code, status)
                self.assertFalse(outcome.timed_out)
                self.assertFalse(outcome.truncated)

    def test_stdout_and_stderr_are_captured_separately(self):
        outcome, _ = self.run_timed(
            python_fixture("streams.py", "to stdout\n", "to stderr\n", "3"))
        self.assertEqual(outcome.stdout, b"to stdout\n")
        self.assertEqual(outcome.stderr, b"to stderr\n")
        self.assertEqual(outcome.stdout_text(), "to stdout\n")
        self.assertEqual(outcome.stderr_text(), "to stderr\n")
        self.assertEqual(outcome.exit_code, 3)

    def test_silent_command_gives_empty_bytes(self):
        outcome, _ = self.run_timed(["/bin/true"])
        self.assertEqual(outcome.exit_code, 0)
        self.assertEqual(outcome.stdout, b"")
        self.assertEqual(outcome.stderr, b"")
        self.assertFalse(outcome.truncated)

    def test_death_by_signal_gives_negative_exit_code(self):
        for signum in (signal.SIGKILL, signal.SIGTERM):
            with self.subTest(signal=signum):
                outcome, _ = self.run_timed(python_fixture("kill_self.py", str(int(signum))))
                self.assertEqual(outcome.exit_code, -int(signum))
                self.assertFalse(outcome.timed_out)
                self.assertEqual(outcome.stdout, b"about to die\n")

    def test_non_utf8_output_decodes_with_replacement_characters(self):
        outcome, _ = self.run_timed(python_fixture("non_utf8.py"))
        self.assertEqual(outcome.stdout, b"out \xff\xfe end\n")
        self.assertEqual(outcome.stdout_text(), "out \ufffd\ufffd end\n")
        self.assertEqual(outcome.stderr, b"err \xc3(\x80 end\n")
        self.assertEqual(outcome.stderr_text(), "err \ufffd(\ufffd end\n")

    def test_duration_ms_is_a_non_negative_number(self):
        outcome, elapsed = self.run_timed(["/bin/true"])
        self.assertIsInstance(outcome.duration_ms, (int, float))
        self.assertNotIsInstance(outcome.duration_ms, bool)
        self.assertGreaterEqual(outcome.duration_ms, 0)
        # It measures the run, so it cannot exceed what the caller saw (plus rounding).
        self.assertLessEqual(outcome.duration_ms, elapsed * 1000.0 + 1.0)

    def test_environment_and_working_directory_are_passed_on(self):
        directory = self.make_temp_dir()
        outcome, _ = self.run_timed(
            ["/bin/sh", "-c", 'printf "%s|%s" "$RELAY_TEST_VALUE" "$(pwd -P)"'],
            env={"RELAY_TEST_VALUE": "from env", "PATH": "/usr/bin:/bin"}, cwd=directory)
        self.assertEqual(outcome.exit_code, 0)
        self.assertEqual(outcome.stdout_text(),
                         "from env|%s" % os.path.realpath(directory))


class ChildIsolation(ExecutorTestCase):

    def report(self, timeout=SAFETY_TIMEOUT_SECONDS):
        outcome, _ = self.run_timed(python_fixture("report_process.py"), timeout=timeout)
        self.assertEqual(outcome.exit_code, 0, outcome.stderr_text())
        self.assertFalse(outcome.timed_out, "reading stdin blocked")
        return json.loads(outcome.stdout_text())

    def test_stdin_is_dev_null_and_reads_eof_at_once(self):
        # Our own stdin becomes a pipe whose write end stays open: a child that inherited it
        # instead of getting /dev/null would block reading it until the timeout.
        saved_stdin = os.dup(0)
        self.addCleanup(os.close, saved_stdin)
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.dup2(read_end, 0)
        try:
            report = self.report(timeout=5.0)
        finally:
            os.dup2(saved_stdin, 0)
        self.assertEqual(report["stdin_target"], "/dev/null")
        self.assertEqual(report["stdin_data"], "")

    def test_child_leads_its_own_session_and_process_group(self):
        report = self.report()
        self.assertEqual(report["sid"], report["pid"])
        self.assertEqual(report["pgid"], report["pid"])
        self.assertNotEqual(report["sid"], os.getsid(0))
        self.assertNotEqual(report["pgid"], os.getpgrp())

    def test_child_inherits_no_descriptor_above_2(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.set_inheritable(True)
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.set_inheritable(write_end, True)
        # As the service does at start-up with what it inherited. Without it, this must
        # still hold on the Popen path (close_fds), but not on posix_spawn's, which an
        # earlier test module may have switched on by sealing (tests/test_faults.py).
        spawn.seal_descriptors()
        report = self.report()
        self.assertNotIn(listener.fileno(), report["fds"])
        self.assertNotIn(write_end, report["fds"])
        self.assertEqual(report["fds"], [0, 1, 2])


class Timeout(ExecutorTestCase):

    def test_sleeping_child_is_killed_at_the_timeout_with_its_output_so_far(self):
        outcome, elapsed = self.run_timed(python_fixture("sleeper.py"), timeout=0.5)
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.exit_code, -signal.SIGTERM)
        self.assertEqual(outcome.stdout, b"sleeping\n")
        self.assertEqual(outcome.stderr, b"still here\n")
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 0.5 + 4.0)

    def test_child_ignoring_sigterm_is_killed_by_sigkill_after_the_grace(self):
        timeout = 0.5
        outcome, elapsed = self.run_timed(
            python_fixture("sleeper.py", "--ignore-term"), timeout=timeout)
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.exit_code, -signal.SIGKILL)
        self.assertEqual(outcome.stdout, b"sleeping\n")
        self.assertGreaterEqual(elapsed, timeout + executor.TERM_GRACE_SECONDS - 0.1)
        self.assertLess(elapsed, timeout + executor.TERM_GRACE_SECONDS + 4.0)

    def test_setting_cancel_ends_the_command_like_a_timeout(self):
        cancel = threading.Event()
        timer = threading.Timer(0.3, cancel.set)
        timer.start()
        self.addCleanup(timer.cancel)
        outcome, elapsed = self.run_timed(python_fixture("sleeper.py"), cancel=cancel)
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.exit_code, -signal.SIGTERM)
        self.assertEqual(outcome.stdout, b"sleeping\n")
        self.assertLess(elapsed, 0.3 + 4.0)

    def test_zero_or_no_timeout_means_no_limit(self):
        for timeout in (0, None):
            with self.subTest(timeout=timeout):
                outcome, _ = self.run_timed(["/bin/sleep", "0.3"], timeout=timeout)
                self.assertFalse(outcome.timed_out)
                self.assertEqual(outcome.exit_code, 0)

    def assertGrandchildDiesWithTheGroup(self, *flags):
        pid_file = self.pid_file(b"GRANDCHILD")
        outcome, elapsed = self.run_timed(
            python_fixture("spawn_grandchild.py", pid_file, *flags), timeout=1.0)
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.exit_code, -signal.SIGTERM)
        self.assertEqual(outcome.stdout, b"spawned\n")
        self.assertLess(elapsed, 1.0 + 4.0)
        grandchild = read_pid(pid_file)
        self.assertIsNotNone(grandchild, "the grandchild never started")
        self.assertTrue(wait_until_gone(grandchild),
                        "grandchild %d still runs after the timeout" % grandchild)

    def test_grandchild_dies_with_the_timed_out_command(self):
        self.assertGrandchildDiesWithTheGroup()

    def test_grandchild_ignoring_sigterm_dies_with_the_timed_out_command(self):
        # The command itself dies of SIGTERM; its grandchild shrugs it off while holding
        # the pipes, and must still be gone once run returns.
        self.assertGrandchildDiesWithTheGroup("--ignore-term")

    def test_shell_background_grandchild_dies_with_the_timed_out_command(self):
        pid_file = self.pid_file(b"sleep")
        outcome, _ = self.run_timed(
            ["/bin/sh", "-c", 'sleep 300 & echo $! > "$1"; sleep 300', "sh", pid_file],
            timeout=0.5)
        self.assertTrue(outcome.timed_out)
        grandchild = read_pid(pid_file)
        self.assertIsNotNone(grandchild)
        self.assertTrue(wait_until_gone(grandchild),
                        "background sleep %d still runs after the timeout" % grandchild)


class BackgroundChildHoldingThePipes(ExecutorTestCase):

    def test_run_returns_soon_after_exit_with_the_output_written_before_it(self):
        pid_file = self.pid_file(b"sleep")
        outcome, elapsed = self.run_timed(python_fixture("leave_background.py", pid_file))
        self.assertLess(elapsed, 5.0)
        self.assertFalse(outcome.timed_out)
        self.assertEqual(outcome.exit_code, 0)
        self.assertEqual(outcome.stdout, b"written before exit\n")
        self.assertEqual(outcome.stderr, b"error written before exit\n")
        self.assertIsNotNone(read_pid(pid_file), "the background child never started")

    def test_command_that_exits_before_the_timeout_is_not_reported_as_timed_out(self):
        # The command exits at once; the deadline passes while we still drain the pipes its
        # background child holds, and that child writes after the deadline (which wakes the
        # loop). The command finished in time: not a timeout (not 3003).
        pid_file = self.pid_file(b"sleep")
        outcome, _ = self.run_timed(
            ["/bin/sh", "-c",
             'echo done; (sleep 0.3; echo late; exec sleep 30) & echo $! > "$1"',
             "sh", pid_file],
            timeout=0.2)
        self.assertEqual(outcome.exit_code, 0)
        self.assertTrue(outcome.stdout.startswith(b"done\n"), outcome.stdout)
        self.assertFalse(outcome.timed_out)


class OutputCap(ExecutorTestCase):

    def flood(self, out_bytes, err_bytes, max_output):
        outcome, _ = self.run_timed(
            python_fixture("flood.py", str(out_bytes), str(err_bytes)), max_output=max_output)
        # Had the child blocked on a full pipe, it would have hit the safety timeout.
        self.assertFalse(outcome.timed_out)
        self.assertEqual(outcome.exit_code, 0, outcome.stderr[-500:])
        return outcome

    def test_stdout_keeps_exactly_the_first_bytes_and_the_child_runs_to_the_end(self):
        outcome = self.flood(5 * 1024 * 1024, 0, 1000)
        self.assertEqual(outcome.stdout, pattern(1000))
        self.assertEqual(outcome.stderr, b"")
        self.assertTrue(outcome.truncated)

    def test_stderr_is_capped_too(self):
        outcome = self.flood(10, 5 * 1024 * 1024, 1000)
        self.assertEqual(outcome.stdout, pattern(10))
        self.assertEqual(outcome.stderr, pattern(1000, reverse=True))
        self.assertTrue(outcome.truncated)

    def test_streams_are_capped_independently(self):
        outcome = self.flood(3 * 1024 * 1024, 2 * 1024 * 1024, 70000)
        self.assertEqual(outcome.stdout, pattern(70000))
        self.assertEqual(outcome.stderr, pattern(70000, reverse=True))
        self.assertTrue(outcome.truncated)

    def test_output_exactly_at_the_cap_is_not_truncated(self):
        outcome = self.flood(1000, 1000, 1000)
        self.assertEqual(outcome.stdout, pattern(1000))
        self.assertEqual(outcome.stderr, pattern(1000, reverse=True))
        self.assertFalse(outcome.truncated)

    def test_one_byte_past_the_cap_is_truncated(self):
        outcome = self.flood(1001, 0, 1000)
        self.assertEqual(outcome.stdout, pattern(1000))
        self.assertTrue(outcome.truncated)

    def test_max_output_zero_keeps_nothing(self):
        outcome = self.flood(100000, 100000, 0)
        self.assertEqual(outcome.stdout, b"")
        self.assertEqual(outcome.stderr, b"")
        self.assertTrue(outcome.truncated)

    def test_max_output_zero_with_no_output_is_not_truncated(self):
        outcome = self.flood(0, 0, 0)
        self.assertFalse(outcome.truncated)


class StartFailures(ExecutorTestCase):

    def test_missing_program_raises_3002(self):
        self.assertStartFails(["/nonexistent/program", "x"], "/nonexistent/program")

    def test_program_not_on_path_raises_3002(self):
        name = "uscmdrelay-no-such-program-%d" % os.getpid()
        self.assertStartFails([name], name)

    def test_file_without_execute_bit_raises_3002(self):
        path = os.path.join(self.make_temp_dir(), "script")
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\necho should not run\n")
        os.chmod(path, 0o644)
        self.assertStartFails([path], path)

    def test_directory_raises_3002(self):
        directory = self.make_temp_dir()
        self.assertStartFails([directory], directory)

    def test_executable_that_is_not_a_program_raises_3002(self):
        path = os.path.join(self.make_temp_dir(), "not-a-program")
        with open(path, "wb") as handle:
            handle.write(b"\x00\x01\x02 this is no executable format\n")
        os.chmod(path, 0o755)
        self.assertStartFails([path], path)

    def test_one_huge_argument_raises_3002(self):
        self.assertStartFails(["/bin/echo", "x" * (3 * 1024 * 1024)], "/bin/echo")

    def test_arguments_totalling_more_than_arg_max_raise_3002(self):
        arg_max = os.sysconf("SC_ARG_MAX")
        if arg_max <= 0 or arg_max > 64 * 1024 * 1024:
            self.skipTest("ARG_MAX is %d here" % arg_max)
        # Each argument stays below the per-string limit (128 KiB on Linux).
        argument = "y" * 100000
        arguments = [argument] * (arg_max // len(argument) + 2)
        self.assertStartFails(["/bin/echo"] + arguments, "/bin/echo")

    def test_message_names_the_program_but_not_the_arguments(self):
        with self.assertRaises(RelayError) as caught:
            executor.run(["/nonexistent/program", "secret-looking-argument"])
        self.assertNotIn("secret-looking-argument", caught.exception.message)


class BuildArgv(ExecutorTestCase):

    def echo_args_command(self, suffix=""):
        line = "%s %s%s" % (shlex.quote(sys.executable), shlex.quote(fixture("echo_args.py")),
                            suffix)
        return Command("default", "echo-args", line, shlex.split(line))

    def run_in_empty_dir(self, argv):
        """Runs argv in a fresh empty directory; returns (outcome, what the dir holds after)."""
        directory = self.make_temp_dir()
        outcome, _ = self.run_timed(argv, cwd=directory)
        return outcome, sorted(os.listdir(directory))

    def test_without_shell_argv_is_the_configured_argv_plus_arguments(self):
        command = Command("default", "p", "printf '%s\\n' fixed", ["printf", "%s\\n", "fixed"])
        argv = executor.build_argv(command, ["a b", "; id"])
        self.assertEqual(argv, ["printf", "%s\\n", "fixed", "a b", "; id"])
        self.assertEqual(command.argv, ["printf", "%s\\n", "fixed"], "configured argv changed")

    def test_without_shell_no_arguments_gives_the_configured_argv(self):
        command = Command("default", "t", "/bin/true", ["/bin/true"])
        self.assertEqual(executor.build_argv(command, []), ["/bin/true"])

    def test_with_shell_argv_is_sh_c_with_quoted_arguments(self):
        command = Command("default", "p", "printf '%s\\n' fixed", ["printf", "%s\\n", "fixed"])
        argv = executor.build_argv(command, ["a b", "; id", "$(id)"], shell=True)
        self.assertEqual(argv, ["/bin/sh", "-c",
                                "printf '%s\\n' fixed 'a b' '; id' '$(id)'"])

    def test_with_shell_and_no_arguments_the_line_runs_as_configured(self):
        command = Command("default", "p", "echo one | tr o O", ["echo", "one", "|", "tr"])
        argv = executor.build_argv(command, [], shell=True)
        self.assertEqual(argv, ["/bin/sh", "-c", "echo one | tr o O"])
        outcome, _ = self.run_timed(argv)
        self.assertEqual(outcome.stdout, b"One\n")

    def test_arguments_reach_argv_literally_without_shell(self):
        argv = executor.build_argv(self.echo_args_command(), TRICKY_ARGUMENTS)
        outcome, left_behind = self.run_in_empty_dir(argv)
        self.assertEqual(outcome.exit_code, 0, outcome.stderr_text())
        self.assertEqual(json.loads(outcome.stdout_text()), TRICKY_ARGUMENTS)
        self.assertEqual(left_behind, [])

    def test_arguments_reach_argv_literally_with_shell_exec(self):
        argv = executor.build_argv(self.echo_args_command(), TRICKY_ARGUMENTS, shell=True)
        outcome, left_behind = self.run_in_empty_dir(argv)
        self.assertEqual(outcome.exit_code, 0, outcome.stderr_text())
        self.assertEqual(json.loads(outcome.stdout_text()), TRICKY_ARGUMENTS)
        self.assertEqual(left_behind, [], "an argument ran as shell syntax")

    def test_each_tricky_argument_alone_arrives_literally_with_shell_exec(self):
        for argument in TRICKY_ARGUMENTS:
            with self.subTest(argument=argument):
                argv = executor.build_argv(self.echo_args_command(), [argument], shell=True)
                outcome, left_behind = self.run_in_empty_dir(argv)
                self.assertEqual(json.loads(outcome.stdout_text()), [argument])
                self.assertEqual(left_behind, [])

    def test_shell_printf_prints_each_argument_literally(self):
        command = Command("default", "p", "printf '%s\\n'", ["printf", "%s\\n"])
        arguments = ["; id", "$(id)", "`id`", "it's", 'say "hi"', "a  b", "*"]
        argv = executor.build_argv(command, arguments, shell=True)
        outcome, left_behind = self.run_in_empty_dir(argv)
        self.assertEqual(outcome.stdout_text(), "".join(a + "\n" for a in arguments))
        self.assertEqual(left_behind, [])

    def test_configured_shell_syntax_works_and_arguments_follow_it(self):
        command = Command("default", "p", "printf 'configured|'; printf '%s|'",
                          ["printf", "configured|;", "printf", "%s|"])
        argv = executor.build_argv(command, ["a b", "; id"], shell=True)
        outcome, _ = self.run_timed(argv)
        self.assertEqual(outcome.stdout_text(), "configured|a b|; id|")


# The shell writes its own pid to "$1", then becomes a long sleep: a command that must be
# ended by us, whose pid the test can check afterwards.
SLEEP_WITH_PID_FILE = ["/bin/sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh"]


class LoopTestCase(ExecutorTestCase):
    """Helpers for `Run` driven by a shared `eventloop.Loop`, as the server drives it."""

    def setUp(self):
        self.loop = Loop()
        self.runs = []
        # Cleanups run last-added first: abort what is left, then close the loop.
        self.addCleanup(self.loop.close)
        self.addCleanup(self.abort_runs)

    def abort_runs(self):
        for command in self.runs:
            command.abort()

    def start(self, argv, **kwargs):
        """Creates a `Run`; returns it and the list its outcome lands in."""
        outcomes = []
        kwargs.setdefault("timeout", SAFETY_TIMEOUT_SECONDS)
        command = executor.Run(self.loop, argv, outcomes.append, **kwargs)
        self.runs.append(command)
        return command, outcomes

    def drive(self, done, limit=SAFETY_TIMEOUT_SECONDS):
        """Runs the loop until `done()` is true; fails the test after `limit` seconds."""
        deadline = time.monotonic() + limit
        while not done():
            if time.monotonic() >= deadline:
                self.fail("not done after %.0f s" % limit)
            self.loop.run_once(0.05)

    def finish(self, argv, **kwargs):
        """Starts `argv` and drives it to its one outcome."""
        _, outcomes = self.start(argv, **kwargs)
        self.drive(lambda: outcomes)
        self.loop.run_once(0)
        self.assertEqual(len(outcomes), 1, "on_done was called more than once")
        return outcomes[0]

    def wait_for_pid(self, pid_file):
        """The pid the command wrote; it runs even while the loop does not."""
        deadline = time.monotonic() + DEATH_WAIT_SECONDS
        while read_pid(pid_file) is None:
            if time.monotonic() >= deadline:
                self.fail("the command never wrote its pid")
            time.sleep(0.01)
        return read_pid(pid_file)

    def assertProcessGone(self, pid):
        """`pid` is not just dead but reaped: the executor waited for its child."""
        with self.assertRaises(ProcessLookupError, msg="process %d still exists" % pid):
            os.kill(pid, 0)


class RunOnALoopTest(LoopTestCase):

    def test_a_run_on_a_shared_loop_gives_the_same_outcome_as_run(self):
        argv = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
        expected = executor.run(argv, timeout=SAFETY_TIMEOUT_SECONDS)
        outcome = self.finish(argv)
        self.assertIsInstance(outcome, executor.Outcome)
        self.assertEqual(
            (outcome.stdout, outcome.stderr, outcome.exit_code, outcome.truncated,
             outcome.timed_out),
            (expected.stdout, expected.stderr, expected.exit_code, expected.truncated,
             expected.timed_out))
        self.assertEqual((outcome.stdout, outcome.stderr, outcome.exit_code),
                         (b"out\n", b"err\n", 3))

    def test_several_runs_on_one_loop_proceed_at_once_each_with_its_own_output(self):
        count = 8
        started = time.monotonic()
        results = [self.start(["/bin/sh", "-c", "sleep 0.3; echo %d" % number])
                   for number in range(count)]
        self.drive(lambda: all(outcomes for _, outcomes in results))
        elapsed = time.monotonic() - started
        for number, (_, outcomes) in enumerate(results):
            with self.subTest(number=number):
                self.assertEqual(len(outcomes), 1)
                self.assertEqual(outcomes[0].stdout, b"%d\n" % number)
                self.assertEqual(outcomes[0].exit_code, 0)
        # One after another would take 8 x 0.3 = 2.4 s; together, about 0.3 s.
        self.assertLess(elapsed, 2.0)

    def test_a_missing_program_raises_3002_and_leaves_nothing_watched(self):
        with self.assertRaises(RelayError) as caught:
            self.start(["/nonexistent/program"])
        self.assertEqual(caught.exception.code, COMMAND_NOT_STARTED)
        # Only the loop's own wake-up pipe is left.
        self.assertEqual(len(self.loop._watched), 1)

    def test_abort_kills_and_reaps_the_command_without_an_outcome(self):
        pid_file = self.pid_file(b"sleep")
        command, outcomes = self.start(SLEEP_WITH_PID_FILE + [pid_file])
        pid = self.wait_for_pid(pid_file)
        command.abort()
        self.assertProcessGone(pid)
        self.loop.run_once(0.1)
        self.assertEqual(outcomes, [], "an aborted Run gave an outcome")

    def test_cancel_ends_the_command_as_timed_out(self):
        pid_file = self.pid_file(b"sleep")
        # No timeout: only the cancel can end it before the drive's deadline.
        command, outcomes = self.start(SLEEP_WITH_PID_FILE + [pid_file], timeout=None)
        pid = self.wait_for_pid(pid_file)
        command.cancel()
        self.drive(lambda: outcomes, limit=10.0)
        outcome = outcomes[0]
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.exit_code, -signal.SIGTERM)
        self.assertProcessGone(pid)

    def test_the_timeout_kills_a_command_on_a_shared_loop(self):
        pid_file = self.pid_file(b"sleep")
        _, outcomes = self.start(SLEEP_WITH_PID_FILE + [pid_file], timeout=0.3)
        pid = self.wait_for_pid(pid_file)
        self.drive(lambda: outcomes, limit=10.0)
        outcome = outcomes[0]
        self.assertIsInstance(outcome, executor.Outcome)
        self.assertTrue(outcome.timed_out)
        self.assertLess(outcome.exit_code, 0)
        self.assertProcessGone(pid)


    def start_failing(self, argv, **kwargs):
        """Like start, with an on_error that records the exception being handled."""
        errors = []
        command, outcomes = self.start(
            argv, on_error=lambda: errors.append(sys.exc_info()[1]), **kwargs)
        return command, outcomes, errors

    def test_an_error_reaping_the_command_goes_to_on_error_once_and_never_on_done(self):
        # waitpid() fails with ECHILD when the kernel reaps for us (SIGCHLD ignored).
        def poll(child):
            raise ChildProcessError(10, "No child processes")
        with mock.patch.object(spawn.Child, "poll", poll):
            command, outcomes, errors = self.start_failing(["/bin/sh", "-c", "exit 3"])
            self.drive(lambda: errors)
            self.loop.run_once(0.1)
        self.assertEqual(outcomes, [])
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], ChildProcessError)
        self.assertTrue(command.done)
        # Only the loop's own wake-up pipe is left watched.
        self.assertEqual(len(self.loop._watched), 1)

    def test_an_error_while_the_command_runs_kills_and_reaps_it(self):
        pid_file = self.pid_file(b"sleep")
        argv = ["/bin/sh", "-c", 'echo $$ > "$1"; echo out; exec sleep 30', "sh", pid_file]

        def add(capture, data):
            raise RuntimeError("planted")
        with mock.patch.object(executor._Capture, "add", add):
            _, outcomes, errors = self.start_failing(argv, timeout=None)
            pid = self.wait_for_pid(pid_file)
            self.drive(lambda: errors)
        self.assertEqual([str(error) for error in errors], ["planted"])
        self.assertEqual(outcomes, [])
        self.assertProcessGone(pid)

    def test_an_error_building_the_outcome_goes_to_on_error(self):
        def outcome(*args):
            raise RuntimeError("planted")
        with mock.patch.object(executor, "Outcome", outcome):
            _, outcomes, errors = self.start_failing(["/bin/true"])
            self.drive(lambda: errors)
        self.assertEqual((outcomes, [str(error) for error in errors]), ([], ["planted"]))

    def test_an_error_raised_by_on_done_itself_propagates_and_skips_on_error(self):
        errors = []

        def on_done(outcome):
            raise RuntimeError("the owner's bug")
        self.runs.append(executor.Run(self.loop, ["/bin/true"], on_done,
                                      on_error=lambda: errors.append(1)))
        with self.assertRaisesRegex(RuntimeError, "the owner's bug"):
            self.drive(lambda: False)
        self.assertEqual(errors, [])

    def test_without_on_error_run_raises_and_reaps_the_command(self):
        pid_file = self.pid_file(b"sleep")

        def add(capture, data):
            raise RuntimeError("planted")
        argv = ["/bin/sh", "-c", 'echo $$ > "$1"; echo out; exec sleep 30', "sh", pid_file]
        with mock.patch.object(executor._Capture, "add", add):
            with self.assertRaisesRegex(RuntimeError, "planted"):
                executor.run(argv, timeout=SAFETY_TIMEOUT_SECONDS)
        self.assertProcessGone(read_pid(pid_file))


class _Recorder(object):
    """Stands for a replies.Stream: keeps the lines written; `unsent` is set by hand."""

    def __init__(self):
        self.lines = []
        self.unsent = 0
        self.below = None

    def write(self, data):
        self.lines.append(json.loads(data.decode("utf-8")))

    def when_below(self, limit, callback):
        self.below = (limit, callback)

    def events(self):
        return [(line["stream"], line["data"]) for line in self.lines]


class _PauseRecorder(object):
    def __init__(self):
        self.calls = []

    def pause_output(self):
        self.calls.append("pause")

    def resume_output(self):
        self.calls.append("resume")


class StreamerTests(unittest.TestCase):
    """streaming.Streamer on a real loop: decoding, coalescing, back-pressure."""

    def setUp(self):
        self.loop = Loop()
        self.addCleanup(self.loop.close)
        self.sink = _Recorder()
        self.streamer = streaming.Streamer(self.loop, self.sink)

    def rounds(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.loop.run_once(0.01)

    def test_a_character_split_across_reads_is_sent_whole(self):
        for piece in (b"a\xe2", b"\x82", b"\xac b"):
            self.streamer.output("stdout", piece)
            self.rounds(0.05)
        self.assertEqual(self.sink.events(), [("stdout", "a"), ("stdout", "\u20ac b")])

    def test_invalid_bytes_and_a_tail_cut_off_at_the_end_become_replacement_characters(self):
        self.streamer.output("stdout", b"x\xff y \xe2\x82")
        self.streamer.output("stderr", b"\xf0\x9f")
        self.streamer.close()
        self.assertEqual(self.sink.events(), [("stdout", "x\ufffd y \ufffd"),
                                              ("stderr", "\ufffd")])

    def test_each_stream_decodes_on_its_own(self):
        self.streamer.output("stdout", b"\xe2\x82")
        self.streamer.output("stderr", b"e")
        self.streamer.output("stdout", b"\xac")
        self.streamer.close()
        self.assertEqual(self.sink.events(), [("stderr", "e"), ("stdout", "\u20ac")])

    def test_many_tiny_writes_become_one_line_within_a_few_milliseconds(self):
        started = time.monotonic()
        for _ in range(1000):
            self.streamer.output("stdout", b"y")
        self.assertEqual(self.sink.lines, [])
        while not self.sink.lines:
            self.assertLess(time.monotonic() - started, 5.0)
            self.loop.run_once(0.1)
        self.assertLess(time.monotonic() - started,
                        streaming.COALESCE_SECONDS + 0.5)
        self.assertEqual(self.sink.events(), [("stdout", "y" * 1000)])

    def test_coalescing_keeps_the_order_across_streams(self):
        for name, text in (("stdout", b"1"), ("stdout", b"2"), ("stderr", b"3"),
                           ("stdout", b"4"), ("stderr", b"5"), ("stderr", b"6")):
            self.streamer.output(name, text)
        self.rounds(0.05)
        self.assertEqual(self.sink.events(), [("stdout", "12"), ("stderr", "3"),
                                              ("stdout", "4"), ("stderr", "56")])

    def test_past_flush_bytes_it_sends_at_once(self):
        self.streamer.output("stdout", b"z" * streaming.FLUSH_BYTES)
        self.assertEqual(self.sink.events(), [("stdout", "z" * streaming.FLUSH_BYTES)])

    def test_a_client_behind_pauses_the_command_until_it_catches_up(self):
        run = _PauseRecorder()
        self.streamer.run = run
        self.sink.unsent = streaming.BACKLOG_BYTES
        self.streamer.output("stdout", b"x" * streaming.FLUSH_BYTES)
        self.assertEqual(run.calls, [])  # at the bound, not past it
        self.sink.unsent = streaming.BACKLOG_BYTES + 1
        self.streamer.output("stdout", b"x" * streaming.FLUSH_BYTES)
        self.assertEqual(run.calls, ["pause"])
        limit, callback = self.sink.below
        self.assertLess(limit, streaming.BACKLOG_BYTES)
        callback()
        self.assertEqual(run.calls, ["pause", "resume"])

    def test_discard_drops_everything_and_resumes_the_command(self):
        run = _PauseRecorder()
        self.streamer.run = run
        self.streamer.output("stdout", b"gathered")
        self.streamer.discard()
        self.streamer.output("stdout", b"later")
        self.streamer.close()
        self.rounds(0.05)
        self.assertEqual((self.sink.lines, run.calls), ([], ["resume"]))


class StreamedRun(ExecutorTestCase):
    """executor.Run with on_output: output handed over as read, pausing and resuming."""

    def start(self, argv, max_output=1048576, timeout=SAFETY_TIMEOUT_SECONDS):
        self.loop = Loop()
        self.addCleanup(self.loop.close)
        self.outcomes = []
        self.received = {"stdout": [], "stderr": []}
        run = executor.Run(self.loop, argv, self.outcomes.append, timeout, max_output,
                           on_output=lambda name, data: self.received[name].append(data))
        self.addCleanup(run.abort)
        return run

    def rounds(self, seconds, until=lambda: False):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            self.loop.run_once(0.01)

    def output(self, name):
        return b"".join(self.received[name])

    def test_output_is_handed_over_and_not_kept(self):
        run = self.start(python_fixture("flood.py", "200000", "3000"))
        self.rounds(SAFETY_TIMEOUT_SECONDS, lambda: self.outcomes)
        outcome = self.outcomes[0]
        self.assertEqual((outcome.exit_code, outcome.stdout, outcome.stderr,
                          outcome.truncated), (0, b"", b"", False))
        self.assertEqual(self.output("stdout"), pattern(200000))
        self.assertEqual(self.output("stderr"), pattern(3000, reverse=True))
        self.assertTrue(run.done)

    def test_max_output_caps_what_is_handed_over(self):
        self.start(python_fixture("flood.py", "200000", "10"), max_output=1000)
        self.rounds(SAFETY_TIMEOUT_SECONDS, lambda: self.outcomes)
        self.assertEqual(self.output("stdout"), pattern(1000))
        self.assertEqual(self.output("stderr"), pattern(10, reverse=True))
        self.assertTrue(self.outcomes[0].truncated)

    def test_a_paused_command_blocks_on_its_writes_and_goes_on_when_resumed(self):
        run = self.start(python_fixture("flood.py", "5000000", "0"), max_output=10 ** 7)
        run.pause_output()
        self.rounds(1.0)
        self.assertEqual(self.outcomes, [])  # blocked on a full pipe: still running
        self.assertEqual(self.output("stdout"), b"")
        run.resume_output()
        self.rounds(SAFETY_TIMEOUT_SECONDS, lambda: self.outcomes)
        self.assertEqual(self.outcomes[0].exit_code, 0)
        self.assertTrue(self.output("stdout") == pattern(5000000), "output altered")

    def test_output_left_in_the_pipe_at_the_exit_waits_for_resume(self):
        # 60000 bytes fit in the pipe: the command exits while nobody reads. The 0.5 s
        # drain after the exit must not run out while paused.
        run = self.start(python_fixture("flood.py", "60000", "0"))
        run.pause_output()
        self.rounds(executor.EXIT_DRAIN_SECONDS + 1.0)
        self.assertEqual(self.outcomes, [])
        run.resume_output()
        self.rounds(SAFETY_TIMEOUT_SECONDS, lambda: self.outcomes)
        self.assertEqual(self.output("stdout"), pattern(60000))
        self.assertEqual(self.outcomes[0].exit_code, 0)

    def test_a_paused_command_is_still_killed_at_its_timeout(self):
        run = self.start(python_fixture("flood.py", "1000000000", "0"), timeout=1.0)
        run.pause_output()
        started = time.monotonic()
        self.rounds(SAFETY_TIMEOUT_SECONDS,
                    lambda: run._child.returncode is not None)
        self.assertLess(time.monotonic() - started, 1.0 + executor.TERM_GRACE_SECONDS + 2)
        self.assertEqual(run._child.returncode, -signal.SIGTERM)
        run.resume_output()
        self.rounds(SAFETY_TIMEOUT_SECONDS, lambda: self.outcomes)
        self.assertTrue(self.outcomes[0].timed_out)


if __name__ == "__main__":
    unittest.main()
