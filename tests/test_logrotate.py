"""samples/uscmdrelay.logrotate, run by the real `logrotate` (its own state file, -f)
against a running server's --log file while requests flow: every audit line is in the
rotated file or the new one, once, and the server writes on in the new file.
"""

import gzip
import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from tests import support
from tests.test_fail2ban import start_logging_server

SAMPLE = os.path.join(support.ROOT, "samples", "uscmdrelay.logrotate")
SAMPLE_PATH = "/var/log/uscmdrelay/uscmdrelay.log"
TOOL_TIMEOUT = 120.0
WAIT_SECONDS = 30.0
CLIENTS = 4
ROTATIONS = 2


def find_logrotate():
    return shutil.which("logrotate") or next(
        (path for path in ("/usr/sbin/logrotate", "/sbin/logrotate")
         if os.access(path, os.X_OK)), None)


class SampleTest(unittest.TestCase):

    def test_the_readme_shows_the_sample_as_it_is(self):
        with open(os.path.join(support.ROOT, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        with open(SAMPLE) as handle:
            stanza = handle.read().split("\n\n" + SAMPLE_PATH, 1)[1]
        self.assertIn("```\n%s%s```" % (SAMPLE_PATH, stanza), readme)


class LogrotateTest(unittest.TestCase):

    def setUp(self):
        self.logrotate = find_logrotate()
        if self.logrotate is None:
            self.skipTest("logrotate is not installed (Debian: logrotate)")
        self.work = tempfile.mkdtemp(prefix="uscmdrelay-logrotate-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.log_file = os.path.join(self.work, "uscmdrelay.log")

    def config(self):
        """The sample with the test's log file for its path, and, since this machine
        has no uscmdrelay user, our own user and group for the new file's owner."""
        with open(SAMPLE) as handle:
            text = handle.read()
        self.assertIn(SAMPLE_PATH + " {", text)
        self.assertNotRegex(text, r"(?m)^\s*(copytruncate|postrotate)\b")
        text = text.replace(SAMPLE_PATH, self.log_file)
        text = text.replace("create 0640 uscmdrelay adm", "create 0640 %s %s" % (
            pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name))
        path = os.path.join(self.work, "logrotate.conf")
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)  # logrotate ignores a config others may write
        return path

    def rotate(self, config, state):
        process = subprocess.Popen([self.logrotate, "-v", "-f", "-s", state, config],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True)
        try:
            output, _ = process.communicate(timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            self.fail("logrotate did not finish")
        self.assertEqual(process.returncode, 0, output)
        self.assertNotIn("error", output.lower(), output)
        return output

    def test_no_audit_line_is_lost_or_doubled_across_rotations_under_load(self):
        config = self.config()
        state = os.path.join(self.work, "logrotate.state")
        config_dir = support.make_config_dir(self)
        server = start_logging_server(self, config_dir, self.log_file)
        run_id = "rotate-%d-%d" % (os.getpid(), int(time.time()))
        stop = threading.Event()
        sent, failures, lock = [], [], threading.Lock()

        def client(number):
            sequence = 0
            while not stop.is_set():
                sequence += 1
                tag = "%d-%d" % (number, sequence)
                try:
                    reply = support.request(server.port, command="echo",
                                            arguments=[run_id, tag])
                except Exception as error:  # reported below
                    failures.append(repr(error))
                    return
                if reply.get("code") != 0:
                    failures.append(reply)
                    return
                with lock:
                    sent.append(tag)

        threads = [threading.Thread(target=client, args=(number,))
                   for number in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(ROTATIONS):
                self.wait_for_more(sent, lock, 100)
                self.rotate(config, state)
            self.wait_for_more(sent, lock, 100)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        self.assertEqual(failures, [])
        # Every reply was sent after its audit line was written; stopping flushes all.
        self.assertEqual(server.stop(), 0)
        files = sorted(name for name in os.listdir(self.work)
                       if name.startswith("uscmdrelay.log"))
        # The second rotation compressed the first one's file (delaycompress).
        self.assertEqual(files, ["uscmdrelay.log", "uscmdrelay.log.1",
                                 "uscmdrelay.log.2.gz"])
        pattern = re.compile(r'arguments=\["%s", "(\d+-\d+)"\] code=0 ' % run_id)
        found = {}
        for name in files:
            tags = pattern.findall(self.read(os.path.join(self.work, name)))
            self.assertGreater(len(tags), 0, "no audit line in %s" % name)
            for tag in tags:
                found[tag] = found.get(tag, 0) + 1
        self.assertEqual(sorted(tag for tag, count in found.items() if count > 1), [])
        self.assertEqual(sorted(found), sorted(sent))
        self.assertEqual(os.stat(self.log_file).st_mode & 0o777, 0o640)

    @staticmethod
    def read(path):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return handle.read()

    def wait_for_more(self, sent, lock, count):
        with lock:
            target = len(sent) + count
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            with lock:
                if len(sent) >= target:
                    return
            time.sleep(0.02)
        self.fail("the clients did not get %d more replies" % count)


if __name__ == "__main__":
    unittest.main()
