"""Tests for spawn: how a command's process starts, on both of its paths, and the orphan
reaper.

The same table runs on the posix_spawn path (what the server uses once it has sealed its
descriptors: os.posix_spawn on CPython 3.8+, the C library's through ctypes on 3.6, 3.7
and PyPy), on the ctypes path on every interpreter, and on the Popen path (commands with
`cwd`, or no usable posix_spawn), and each row looks at a real child from outside,
through /proc: a child has the same session, descriptors, signal dispositions,
environment and exit codes every way.
"""

import json
import os
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
import unittest
from unittest import mock

from tests import support

if support.SRC not in sys.path:
    sys.path.insert(0, support.SRC)

from uscmdrelay import libc_spawn, spawn  # noqa: E402
from uscmdrelay.eventloop import Loop  # noqa: E402
from uscmdrelay.protocol import COMMAND_NOT_STARTED, RelayError  # noqa: E402

# A safety net only: a child that should end on its own gets this long.
SAFETY_TIMEOUT_SECONDS = 20.0
WAIT_SECONDS = 5.0
SLEEP = ["/bin/sleep", "30"]
ENV = shutil.which("env") or "/usr/bin/env"
# glibc's posix_spawn leaves its two internal signals (32 and 33, below the SIGRTMIN it
# reports and outside valid_signals()) ignored in the child, and Python cannot ask it
# otherwise; glibc programs handle both themselves. Popen's children have them at their
# defaults. Not compared.
GLIBC_INTERNAL = sum(1 << (number - 1) for number in range(32, signal.SIGRTMIN))
MISSING_PROGRAM = "/nonexistent/uscmdrelay-program"
MISSING_DIRECTORY = "/nonexistent/uscmdrelay-directory"


def setUpModule():
    # What service.serve() does before it builds the server; the posix_spawn path is
    # only taken once it is done. A process-wide act, as in the server.
    if not spawn.seal_descriptors():
        raise unittest.SkipTest("needs /proc")


def fixture(name, *arguments):
    return [sys.executable, os.path.join(support.FIXTURES, name)] + list(arguments)


def status_mask(pid, field):
    """A signal mask line of /proc/PID/status (SigIgn, SigBlk, ...), as an int."""
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name == field:
                return int(value.strip(), 16)
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def bit(signum):
    return 1 << (int(signum) - 1)


def process_state(pid):
    """The state letter from /proc/PID/stat, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            text = handle.read()
    except (IOError, OSError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


class StartCases(object):
    """The table every path must pass; a subclass says which path `start` takes: the
    `method` a child reports, and the `switches` of spawn that lead there."""

    method = None
    switches = {}

    def start(self, argv, **kwargs):
        """Starts argv with spawn.start; the child is killed and reaped in a cleanup."""
        child = spawn.start(argv, **kwargs)
        self.addCleanup(self.reap, child)
        return child

    def reap(self, child):
        if child.returncode is None:
            child.signal_group(signal.SIGKILL)
            try:
                child.wait()
            except ChildProcessError:
                pass
        if child not in self.closed:
            child.close()

    def setUp(self):
        self.closed = []  # children whose pipes communicate() has closed
        if self.switches:
            patcher = mock.patch.multiple(spawn, **self.switches)
            patcher.start()
            self.addCleanup(patcher.stop)

    def communicate(self, child):
        """Reads stdout and stderr to their ends and reaps the child; returns
        (stdout, stderr, returncode)."""
        output = {child.stdout_fd: [], child.stderr_fd: []}
        open_fds = list(output)
        deadline = time.monotonic() + SAFETY_TIMEOUT_SECONDS
        while open_fds:
            left = deadline - time.monotonic()
            self.assertGreater(left, 0, "the child's pipes stayed open")
            readable, _, _ = select.select(open_fds, [], [], left)
            for fd in readable:
                data = os.read(fd, 65536)
                if data:
                    output[fd].append(data)
                else:
                    open_fds.remove(fd)
        returncode = child.wait()
        child.close()
        self.closed.append(child)
        return (b"".join(output[child.stdout_fd]), b"".join(output[child.stderr_fd]),
                returncode)

    def test_start_takes_the_path_under_test(self):
        child = self.start(SLEEP)
        self.assertEqual(child.method, self.method)

    def test_a_command_with_cwd_always_starts_with_popen(self):
        child = self.start(["/bin/pwd"], cwd="/")
        self.assertEqual(child.method, "Popen")
        self.assertEqual(self.communicate(child), (b"/\n", b"", 0))

    def test_the_child_leads_its_own_session_and_process_group(self):
        child = self.start(SLEEP)
        self.assertEqual(os.getsid(child.pid), child.pid)
        self.assertEqual(os.getpgid(child.pid), child.pid)
        self.assertNotEqual(os.getsid(child.pid), os.getsid(0))

    # What a child does before its exec (setsid, the descriptors 0-2) can be looked at
    # from outside as soon as `start` returns. What exec itself does (closing
    # close-on-exec descriptors, the new environment) may still be under way then: the
    # kernel lets posix_spawn's parent go on before it has closed them. The child
    # reports those itself.

    def test_stdin_is_dev_null_and_stdout_and_stderr_are_our_pipes(self):
        child = self.start(SLEEP)
        self.assertEqual(os.readlink("/proc/%d/fd/0" % child.pid), "/dev/null")
        for number, ours in ((1, child.stdout_fd), (2, child.stderr_fd)):
            with self.subTest(fd=number):
                mode = os.fstat(ours).st_mode
                self.assertTrue(stat.S_ISFIFO(mode))
                self.assertEqual(os.readlink("/proc/%d/fd/%d" % (child.pid, number)),
                                 "pipe:[%d]" % os.fstat(ours).st_ino)

    def test_the_child_reads_eof_from_stdin_and_holds_only_descriptors_0_to_2(self):
        # A descriptor inherited from our parent: seal_descriptors() (run again here, as
        # at start-up) must keep it from the child.
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.set_inheritable(write_end, True)
        self.assertTrue(spawn.seal_descriptors())
        self.assertFalse(os.get_inheritable(write_end))
        stdout, stderr, returncode = self.communicate(
            self.start(fixture("report_process.py")))
        self.assertEqual(returncode, 0, stderr)
        report = json.loads(stdout.decode("utf-8"))
        self.assertEqual((report["fds"], report["stdin_target"], report["stdin_data"]),
                         ([0, 1, 2], "/dev/null", ""))
        self.assertEqual((report["sid"], report["pgid"]), (report["pid"], report["pid"]))

    def own_status(self, field):
        """The child's view of a signal mask of its own: its /proc/self/status line."""
        stdout, _, returncode = self.communicate(self.start(["cat", "/proc/self/status"]))
        self.assertEqual(returncode, 0)
        for line in stdout.decode("ascii").splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.strip(), 16)
        self.fail("no %s in the child's status" % field)

    def test_signals_python_ignores_are_at_their_defaults_in_the_child(self):
        self.assertTrue(status_mask(os.getpid(), "SigIgn") & bit(signal.SIGPIPE),
                        "Python ignores SIGPIPE in this process")
        ignored = self.own_status("SigIgn") & ~GLIBC_INTERNAL
        self.assertFalse(ignored & bit(signal.SIGPIPE), "SIGPIPE is ignored in the child")
        self.assertFalse(ignored & bit(signal.SIGXFSZ), "SIGXFSZ is ignored in the child")
        # Any other signal as this process has it, on both paths.
        expected = status_mask(os.getpid(), "SigIgn")
        for signum in spawn.DEFAULT_SIGNALS:
            expected &= ~bit(signum)
        self.assertEqual(ignored, expected)

    def test_the_child_starts_with_no_signal_blocked(self):
        if status_mask(os.getpid(), "SigBlk"):
            self.skipTest("this thread blocks signals, which Popen passes on")
        self.assertEqual(self.own_status("SigBlk"), 0)

    def environment(self, **kwargs):
        """The environment the child reports (env -0), as sorted bytes entries."""
        stdout, stderr, returncode = self.communicate(self.start([ENV, "-0"], **kwargs))
        self.assertEqual(returncode, 0, stderr)
        return sorted(stdout.split(b"\0")[:-1])

    def test_the_child_gets_exactly_the_environment_given(self):
        env = {"USCMDRELAY_A": "one two", "EMPTY": "", "UTF8": "caf\u00e9",
               "LINES": "one\ntwo"}
        self.assertEqual(self.environment(env=env),
                         sorted(("%s=%s" % item).encode("utf-8") for item in env.items()))

    def test_without_env_the_child_gets_ours(self):
        self.assertEqual(self.environment(),
                         sorted(os.fsencode(name) + b"=" + os.fsencode(value)
                                for name, value in os.environ.items()))

    def test_a_program_without_a_slash_is_looked_up_on_path(self):
        stdout, _, returncode = self.communicate(
            self.start(["echo", "found"], env={"PATH": "/usr/bin:/bin"}))
        self.assertEqual((stdout, returncode), (b"found\n", 0))

    def test_output_arrives_on_its_pipes_and_the_exit_status_is_the_returncode(self):
        child = self.start(fixture("streams.py", "to stdout\n", "to stderr\n", "3"))
        self.assertEqual(self.communicate(child), (b"to stdout\n", b"to stderr\n", 3))

    def test_a_child_killed_by_a_signal_has_minus_that_signal_as_returncode(self):
        child = self.start(fixture("kill_self.py", str(int(signal.SIGKILL))))
        self.assertEqual(self.communicate(child), (b"about to die\n", b"", -9))

    def test_signal_group_reaches_the_child_and_a_gone_group_is_fine(self):
        child = self.start(SLEEP)
        child.signal_group(signal.SIGTERM)
        self.assertEqual(child.wait(), -signal.SIGTERM)
        child.signal_group(signal.SIGKILL)  # no such group any more: no error

    def test_poll_reaps_an_exited_child_and_forgets_its_pid(self):
        child = self.start(["/bin/sh", "-c", "exit 4"])
        self.assertIn(child.pid, spawn._commands)
        deadline = time.monotonic() + WAIT_SECONDS
        while child.poll() is None:
            self.assertLess(time.monotonic(), deadline, "never reaped")
            time.sleep(0.01)
        self.assertEqual(child.returncode, 4)
        self.assertNotIn(child.pid, spawn._commands)

    def assertNotStarted(self, message, argv, **kwargs):
        with self.assertRaises(RelayError) as caught:
            self.start(argv, **kwargs)
        self.assertEqual(caught.exception.code, COMMAND_NOT_STARTED)
        self.assertEqual(caught.exception.message, message)

    def test_a_missing_program_raises_3002_with_the_reason(self):
        self.assertNotStarted("cannot start %s: No such file or directory" % MISSING_PROGRAM,
                              [MISSING_PROGRAM, "secret-looking-argument"])

    def test_a_program_not_on_path_raises_3002_with_the_reason(self):
        self.assertNotStarted("cannot start uscmdrelay-no-such-program: No such file or "
                              "directory", ["uscmdrelay-no-such-program"],
                              env={"PATH": "/usr/bin:/bin"})

    def test_a_file_without_execute_bits_raises_3002_with_the_reason(self):
        # Even root may only execute a file with some execute bit set.
        with tempfile.NamedTemporaryFile(prefix="uscmdrelay-spawn-") as handle:
            self.assertNotStarted("cannot start %s: Permission denied" % handle.name,
                                  [handle.name])

    def test_a_nul_in_an_argument_or_the_environment_raises_3002(self):
        # C would take the NUL for the string's end and run something else.
        for argv, env in ((["/bin/echo", "a\0b"], None), (["/bin/true"], {"A": "x\0y"})):
            with self.subTest(argv=argv, env=env):
                self.assertNotStarted("cannot start %s: embedded null byte" % argv[0], argv,
                                      env=env)

    def test_arguments_past_the_kernels_limit_raise_3002(self):
        # One string past MAX_ARG_STRLEN (128 KiB), and a list past ARG_MAX in total.
        for argv in (["/bin/echo", "x" * 200000], ["/bin/echo"] + ["y" * 1000] * 3000):
            with self.subTest(count=len(argv)):
                self.assertNotStarted("cannot start /bin/echo: Argument list too long", argv)

    def test_a_variable_name_with_an_equals_sign_raises_3002(self):
        self.assertNotStarted("cannot start /bin/true: illegal environment variable name",
                              ["/bin/true"], env={"A=B": "x"})

    def test_a_missing_working_directory_raises_3002_with_the_reason(self):
        self.assertNotStarted("cannot start /bin/true: working directory %s: No such file "
                              "or directory" % MISSING_DIRECTORY, ["/bin/true"],
                              cwd=MISSING_DIRECTORY)

    def test_a_working_directory_that_is_a_file_raises_3002_with_the_reason(self):
        with tempfile.NamedTemporaryFile(prefix="uscmdrelay-spawn-") as handle:
            self.assertNotStarted("cannot start /bin/true: working directory %s: Not a "
                                  "directory" % handle.name, ["/bin/true"], cwd=handle.name)


class PopenStartTest(StartCases, unittest.TestCase):
    """The Popen path: a command with `cwd`, no /proc, or no usable posix_spawn."""

    method = "Popen"
    switches = {"_POSIX_SPAWN": False}


@unittest.skipUnless(spawn.posix_spawn_available(), "neither os.posix_spawn (Python "
                     "3.8+) nor the C library's through ctypes")
class PosixSpawnStartTest(StartCases, unittest.TestCase):
    """The posix_spawn path: what the server uses once descriptors are sealed."""

    method = "posix_spawn"

    def test_without_sealed_descriptors_start_falls_back_to_popen(self):
        with mock.patch.object(spawn, "_sealed", False):
            self.assertFalse(spawn.sealed())
            self.assertFalse(spawn.uses_posix_spawn())
            child = self.start(SLEEP)
        self.assertEqual(child.method, "Popen")
        self.assertTrue(spawn.sealed())
        self.assertTrue(spawn.uses_posix_spawn())
        self.assertFalse(spawn.uses_posix_spawn(cwd="/"))


@unittest.skipUnless(libc_spawn.load(), "the C library's posix_spawn cannot be called "
                     "through ctypes here")
class LibcSpawnStartTest(StartCases, unittest.TestCase):
    """The C library's posix_spawn through ctypes: what 3.6, 3.7 and PyPy use, taken
    here on every interpreter."""

    method = "posix_spawn"
    switches = {"_OS_POSIX_SPAWN": False}

    def test_start_calls_the_c_librarys_posix_spawn(self):
        # `method` is the same for both posix_spawn calls: make sure this one is taken.
        with mock.patch.object(libc_spawn.LibcSpawn, "spawn", autospec=True,
                               side_effect=libc_spawn.LibcSpawn.spawn) as spawned:
            self.start(SLEEP)
        self.assertEqual(spawned.call_count, 1)

    def test_a_c_library_without_posix_spawn_setsid_is_not_used(self):
        # glibc before 2.26 refuses the flag with EINVAL: load() must then say None.
        class RefusingFlags(object):
            def __init__(self, libc):
                self._libc = libc

            def __getattr__(self, name):
                function = getattr(self._libc, name)
                if name != "posix_spawnattr_setflags":
                    return function

                class Refusing(object):
                    argtypes = restype = None

                    def __call__(self, *arguments):
                        return 22  # EINVAL
                return Refusing()

        import ctypes
        with self.assertRaises(OSError):
            libc_spawn.LibcSpawn(ctypes, RefusingFlags(ctypes.CDLL(None, use_errno=True)))


class WithoutTheCLibrarysPosixSpawnTest(unittest.TestCase):
    """Where ctypes or the C library cannot do it, commands start with Popen."""

    def test_without_ctypes_there_is_no_libc_spawn(self):
        with mock.patch.dict(sys.modules, {"ctypes": None}):  # import raises ImportError
            self.assertIsNone(libc_spawn._load())

    def test_then_start_takes_popen(self):
        with mock.patch.multiple(spawn, _OS_POSIX_SPAWN=False), \
                mock.patch.object(libc_spawn, "_loaded", [None]):
            self.assertFalse(spawn.posix_spawn_available())
            self.assertFalse(spawn.uses_posix_spawn())
            child = spawn.start(["/bin/true"])
        self.assertEqual(child.method, "Popen")
        self.assertEqual(child.wait(), 0)
        child.close()


@unittest.skipUnless(os.path.isdir("/proc/self"), "needs /proc")
class OrphanReapingTest(unittest.TestCase):
    """reap_orphans() reaps exited children that are not commands; it is what the
    server runs every second as PID 1."""

    def wait_for_zombie(self, pid):
        deadline = time.monotonic() + WAIT_SECONDS
        while process_state(pid) != "Z":
            if time.monotonic() >= deadline:
                self.fail("process %d did not become a zombie" % pid)
            time.sleep(0.01)

    def orphan(self, argv):
        """A child of ours that is not a command, killed and reaped in a cleanup."""
        pid = os.spawnv(os.P_NOWAIT, argv[0], argv)

        def stop():
            if process_state(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        self.addCleanup(stop)
        return pid

    def test_reaps_an_exited_child_that_is_not_a_command_and_leaves_commands_alone(self):
        orphan = self.orphan(["/bin/sh", "-c", "exit 5"])
        command = spawn.start(["/bin/sh", "-c", "exit 7"])
        self.addCleanup(command.close)
        # Both are zombies now: nothing has reaped the command yet.
        self.wait_for_zombie(orphan)
        self.wait_for_zombie(command.pid)
        reaped = spawn.reap_orphans()
        self.assertIn(orphan, reaped)
        self.assertNotIn(command.pid, reaped)
        self.assertIsNone(process_state(orphan))
        self.assertEqual(command.wait(), 7, "the command's exit status was stolen")
        self.assertNotIn(command.pid, spawn._commands)

    def test_the_periodic_reaper_reaps_on_the_loop(self):
        orphan = self.orphan(["/bin/true"])
        loop = Loop()
        self.addCleanup(loop.close)
        spawn.reap_orphans_every(loop, 0.05)
        deadline = time.monotonic() + 10.0
        while process_state(orphan) is not None:
            self.assertLess(time.monotonic(), deadline, "the orphan was never reaped")
            loop.run_once(0.05)


if __name__ == "__main__":
    unittest.main()
