"""The zipapp build: reproducible, fresh, runnable, and polite to old interpreters."""

import glob
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
import zipfile

from tests import support

sys.path.insert(0, support.ROOT)
import build_zipapp  # noqa: E402


def _python2():
    for pattern in ("/root/.pyenv/versions/2.*/bin/python", "/usr/bin/python2"):
        for path in sorted(glob.glob(pattern)):
            if os.access(path, os.X_OK):
                return path
    return shutil.which("python2")


class BuildTest(unittest.TestCase):

    def test_two_builds_are_byte_identical(self):
        first, second = build_zipapp.build(), build_zipapp.build()
        self.assertEqual(hashlib.sha256(first).hexdigest(),
                         hashlib.sha256(second).hexdigest())

    def test_committed_pyz_is_a_fresh_build(self):
        with open(support.PYZ, "rb") as handle:
            committed = handle.read()
        self.assertTrue(committed == build_zipapp.build(),
                        "dist/uscmdrelay.pyz is stale: run python3 build_zipapp.py")

    def test_pyz_starts_with_shebang_and_is_executable(self):
        with open(support.PYZ, "rb") as handle:
            self.assertEqual(handle.readline(), b"#!/usr/bin/env python3\n")
        self.assertEqual(stat.S_IMODE(os.stat(support.PYZ).st_mode) & 0o755, 0o755)

    def test_archive_is_sorted_with_fixed_times_and_no_bytecode(self):
        archive = zipfile.ZipFile(io.BytesIO(build_zipapp.build()))
        names = archive.namelist()
        self.assertEqual(names, sorted(names))
        self.assertIn("__main__.py", names)
        self.assertIn("uscmdrelay/cli.py", names)
        self.assertIn("uscmdrelay/protocol.py", names)
        for info in archive.infolist():
            self.assertEqual(info.date_time, build_zipapp.FIXED_DATE_TIME, info.filename)
            self.assertEqual(stat.S_IMODE(info.external_attr >> 16), 0o644, info.filename)
            self.assertNotIn("__pycache__", info.filename)
            self.assertFalse(info.filename.endswith(".pyc"), info.filename)
            self.assertFalse(info.filename.startswith("tests/"), info.filename)

    def test_check_reports_a_stale_file(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "uscmdrelay.pyz")
        fresh = build_zipapp.build()
        build_zipapp.write(fresh, path)
        self.assertIsNone(build_zipapp.check(fresh, path))
        with open(path, "ab") as handle:
            handle.write(b"\n")
        problem = build_zipapp.check(fresh, path)
        self.assertIn("stale", problem)
        self.assertIn("python3 build_zipapp.py", problem)

    def test_check_command_exits_zero_when_fresh(self):
        result = subprocess.run([sys.executable, os.path.join(support.ROOT, "build_zipapp.py"),
                                 "--check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("fresh", result.stdout)

    def test_pyz_runs_under_this_interpreter(self):
        result = subprocess.run([sys.executable, support.PYZ, "--version"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout.strip(), r"^uscmdrelay \d+\.\d+\.\d+$")

    def test_pyz_compiles_each_of_its_modules_once(self):
        # zipimport compiles a module once to name its file and again to run it (CPython
        # gh-141276); __main__ installs an importer that names the file from the archive.
        # __main__ itself is loaded (twice) before that. Python < 3.8 compiles in C,
        # out of this test's sight.
        if sys.version_info < (3, 8):
            self.skipTest("zipimport is written in C before Python 3.8")
        directory = support.make_config_dir(self)
        script = (
            "import builtins, runpy, sys\n"
            "compile_source = builtins.compile\n"
            "def counting(source, filename, *args, **kwargs):\n"
            "    print('compiled', filename)\n"
            "    return compile_source(source, filename, *args, **kwargs)\n"
            "builtins.compile = counting\n"
            "sys.argv = [sys.argv[1], 'configtest', '--config-dir', sys.argv[2]]\n"
            "sys.path.insert(0, sys.argv[0])\n"
            "try:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "finally:\n"
            "    for name, module in sorted(sys.modules.items()):\n"
            "        if name.startswith('uscmdrelay'):\n"
            "            print('file', module.__file__)\n")
        result = subprocess.run([sys.executable, "-S", "-c", script, support.PYZ, directory],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Config OK", result.stdout)
        compiled = [line.split(" ", 1)[1] for line in result.stdout.splitlines()
                    if line.startswith("compiled ")]
        files = [line.split(" ", 1)[1] for line in result.stdout.splitlines()
                 if line.startswith("file ")]
        package = os.path.join(support.PYZ, "uscmdrelay")
        self.assertIn(os.path.join(package, "config.py"), files)
        self.assertEqual(sorted(compiled), sorted(
            files + 2 * [os.path.join(support.PYZ, "__main__.py")]))

    def test_python2_gets_one_line_instead_of_a_syntax_error(self):
        python2 = _python2()
        if python2 is None:
            self.skipTest("no Python 2 interpreter here")
        result = subprocess.run([python2, support.PYZ, "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("needs Python 3.6 or newer", lines[0])


COUNT_TESTS = os.path.join(support.ROOT, ".ci", "count-tests")
# `python3 -m unittest -v` logs of one module: a pass, a failure, an error, a pass that
# wrote "noise" to stderr, a skipped test and a class skipped in setUpClass.
LOG_36 = """\
test_a (test_crafted.Passing) ... ok
test_error (test_crafted.Passing) ... ERROR
test_fail (test_crafted.Passing) ... FAIL
test_noisy (test_crafted.Passing) ... noise
ok
test_skip (test_crafted.Passing) ... skipped 'not here'
skipped 'no tool'

======================================================================
ERROR: test_error (test_crafted.Passing)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/tmp/test_crafted.py", line 8, in test_error
RuntimeError: boom ... ok

======================================================================
FAIL: test_fail (test_crafted.Passing)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/tmp/test_crafted.py", line 7, in test_fail
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 5 tests in 0.000s

FAILED (failures=1, errors=1, skipped=2)
"""
# 3.12 style: the method in the test's name, the class skip named, skips not in "Ran";
# and a class whose setUpClass failed.
LOG_312 = """\
test_a (test_crafted.Passing.test_a) ... ok
test_error (test_crafted.Passing.test_error) ... ERROR
test_fail (test_crafted.Passing.test_fail) ... FAIL
test_noisy (test_crafted.Passing.test_noisy) ... noise
ok
test_skip (test_crafted.Passing.test_skip) ... skipped 'not here'
setUpClass (test_crafted.SkippedClass) ... skipped 'no tool'
setUpClass (test_crafted.Broken) ... ERROR

======================================================================
ERROR: test_error (test_crafted.Passing.test_error)
----------------------------------------------------------------------
RuntimeError: boom

======================================================================
ERROR: setUpClass (test_crafted.Broken)
----------------------------------------------------------------------
OSError: no fixture

======================================================================
FAIL: test_fail (test_crafted.Passing.test_fail)
----------------------------------------------------------------------
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 4 tests in 0.001s

FAILED (failures=1, errors=2, skipped=2)
"""
CRAFTED_MODULE = """\
import sys, unittest
class Passing(unittest.TestCase):
    def test_a(self): pass
    def test_noisy(self): sys.stderr.write("noise\\n")
    def test_skip(self): self.skipTest("not here")
    def test_fail(self): self.assertEqual(1, 2)
    def test_error(self): raise RuntimeError("boom")
class SkippedClass(unittest.TestCase):
    @classmethod
    def setUpClass(cls): raise unittest.SkipTest("no tool")
    def test_x(self): pass
    def test_y(self): pass
"""


class CountTestsTest(unittest.TestCase):
    """.ci/count-tests, which .ci/run uses to total the passes exactly."""

    def count(self, log_text):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "log")
        with open(path, "w") as handle:
            handle.write(log_text)
        result = subprocess.run(["bash", COUNT_TESTS, path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_counts_a_python_36_log_exactly(self):
        self.assertEqual(self.count(LOG_36), "passed 2 failed 2 skipped 2\n")

    def test_counts_a_python_312_log_with_a_failed_setupclass_exactly(self):
        self.assertEqual(self.count(LOG_312), "passed 2 failed 3 skipped 2\n")

    def test_counts_an_all_passing_log(self):
        self.assertEqual(self.count("test_a (m.C) ... ok\n\n---\nRan 1 test in 0s\n\nOK\n"),
                         "passed 1 failed 0 skipped 0\n")

    def test_counts_this_interpreters_own_log_exactly(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        with open(os.path.join(directory, "test_crafted.py"), "w") as handle:
            handle.write(CRAFTED_MODULE)
        result = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_crafted"],
                                cwd=directory, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True,
                                timeout=60)
        self.assertEqual(self.count(result.stdout), "passed 2 failed 2 skipped 2\n",
                         result.stdout)


if __name__ == "__main__":
    unittest.main()
