"""--metrics-file: the Prometheus text the server writes for node_exporter's textfile
collector, checked with the real `promtool` after real traffic, and its counts against
the requests sent; the file is replaced atomically, a failed write costs one WARNING and
never the service, and no string a client sends ever becomes a label.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import tests  # noqa: F401  (puts src/ on sys.path)
from tests import support
from uscmdrelay import metrics

WAIT_SECONDS = 30.0  # the file is rewritten every 5 s; a loaded machine is slow
PROMTOOL_TIMEOUT = 60.0
EVIL_COMMAND = 'evil"\n{label}'
RELAYS = support.DEFAULT_RELAYS.replace("[ops]", "[ops]\nsleep = /bin/sleep")

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|\})')


def parse_metrics(text):
    """{(name, ((label, value), ...) sorted): value} of exposition `text`; raises
    ValueError for anything that is not a comment or a well-formed sample, or for a text
    that does not end with a line feed (a partial file)."""
    if not text.endswith("\n"):
        raise ValueError("no final line feed: %r" % text[-80:])
    samples = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError("not a sample: %r" % line)
        name, labels, value = match.groups()
        pairs = []
        if labels:
            rest = labels[1:]
            while rest:
                label = _LABEL.match(rest)
                if not label:
                    raise ValueError("bad labels: %r" % line)
                pairs.append((label.group(1), re.sub(
                    r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1),
                    label.group(2))))
                rest = rest[label.end():]
                if label.group(3) == "}":
                    if rest:
                        raise ValueError("text after the labels: %r" % line)
                    break
        samples[(name, tuple(sorted(pairs)))] = float(value)
    return samples


def value(samples, name, **labels):
    return samples.get(("uscmdrelay_" + name, tuple(sorted(labels.items()))), 0)


def read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def wait_until(predicate, what, timeout=WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def wait_for_samples(path, check, what):
    """Waits until the file parses and `check(samples)` holds; returns the samples."""
    def ready():
        text = read(path)
        if text is None:
            return None
        samples = parse_metrics(text)
        return samples if check(samples) else None
    return wait_until(ready, what)


def promtool(test, path):
    """Runs the real `promtool check metrics < path`; fails `test` unless it is happy."""
    if shutil.which("promtool") is None:
        test.skipTest("promtool is not installed (Debian: prometheus)")
    with open(path, "rb") as handle:
        process = subprocess.Popen(["promtool", "check", "metrics"], stdin=handle,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            output, _ = process.communicate(timeout=PROMTOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            test.fail("promtool did not finish")
    test.assertEqual((process.returncode, output.decode("utf-8", "replace")), (0, ""))


def metrics_dir(test):
    directory = tempfile.mkdtemp(prefix="uscmdrelay-metrics-")
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


class RenderTest(unittest.TestCase):
    """metrics.py on its own: escaping, labels, histograms."""

    class _Request(object):
        def __init__(self, cluster, name):
            self.cluster, self.name = cluster, name
            self.command = "::list" if cluster is None else cluster + "::" + name

    class _Config(object):
        clusters = {"default": {"true": None}, 'we"ird\n\\': {"x": None}}

    class _Outcome(object):
        duration_ms = 12.0

    def relay_metrics(self):
        return metrics.RelayMetrics(self._Config(), 1700000000.5, "1.0.0", "3.6.15",
                                    "CPython")

    def test_label_values_and_help_are_escaped_as_the_format_says(self):
        self.assertEqual(metrics.escape_label_value('a\\b"c\nd'), 'a\\\\b\\"c\\nd')
        self.assertEqual(metrics.escape_help('a\\b"c\nd'), 'a\\\\b"c\\nd')

    def test_only_configured_names_become_labels(self):
        relay = self.relay_metrics()
        for cluster, name, labels in (
                ("default", "true", ("default", "true")),
                ("default", EVIL_COMMAND, ("default", "unknown")),
                (EVIL_COMMAND, "true", ("unknown", "unknown")),
                ('we"ird\n\\', "x", ('we"ird\n\\', "x")),
                (None, "::list", ("none", "::list"))):
            with self.subTest(cluster=cluster, name=name):
                self.assertEqual(relay.names(self._Request(cluster, name)), labels)
        self.assertEqual(relay.names(None), ("none", "none"))

    def test_the_readme_documents_every_metric_with_its_type(self):
        with open(os.path.join(support.ROOT, "README.md"), encoding="utf-8") as handle:
            documented = re.findall(r"^\| `(uscmdrelay_\w+)` \| (\w+) \|", handle.read(),
                                    re.M)
        rendered = re.findall(r"^# TYPE (\S+) (\S+)$", self.relay_metrics().render(),
                              re.M)
        self.assertEqual(sorted(documented), sorted(rendered))

    def test_rendered_text_parses_back_to_the_counts(self):
        relay = self.relay_metrics()
        for _ in range(3):
            relay.request_done(self._Request("default", "true"), 0, self._Outcome())
        relay.request_done(self._Request('we"ird\n\\', "x"), 3001, self._Outcome())
        relay.request_done(None, 3004)
        samples = parse_metrics(relay.render())
        self.assertEqual(value(samples, "requests_total", cluster="default",
                               command="true", code="0"), 3)
        self.assertEqual(value(samples, "requests_total", cluster='we"ird\n\\',
                               command="x", code="3001"), 1)
        self.assertEqual(value(samples, "connections_rejected_total"), 1)
        self.assertEqual(value(samples, "command_duration_seconds_bucket", cluster="default",
                               command="true", le="0.01"), 0)
        self.assertEqual(value(samples, "command_duration_seconds_bucket", cluster="default",
                               command="true", le="0.025"), 3)
        self.assertEqual(value(samples, "command_duration_seconds_bucket", cluster="default",
                               command="true", le="+Inf"), 3)
        self.assertAlmostEqual(value(samples, "command_duration_seconds_sum",
                                     cluster="default", command="true"), 0.036)
        self.assertEqual(value(samples, "start_time_seconds"), 1700000000.5)
        self.assertEqual(value(samples, "build_info", version="1.0.0", python="3.6.15",
                               python_implementation="CPython"), 1)


class MetricsFileTest(unittest.TestCase):
    """A real server with --metrics-file, real requests, the real promtool."""

    def start(self, path, *args):
        config_dir = support.make_config_dir(self, relays=RELAYS)
        return support.start_server(self, config_dir,
                                    args=("--metrics-file", path) + args)

    def test_counts_match_the_requests_sent_and_promtool_accepts_the_file(self):
        path = os.path.join(metrics_dir(self), "uscmdrelay.prom")
        server = self.start(path, "--max-connections-per-host", "1")
        started = time.time()
        samples = wait_for_samples(path, lambda s: value(s, "start_time_seconds"),
                                   "the file written at start-up")
        self.assertEqual(value(samples, "commands_running"), 0)
        port = server.port
        for _ in range(5):
            self.assertEqual(support.request(port, command="true")["code"], 0)
        for _ in range(2):
            self.assertEqual(support.request(port, command="fail")["code"], 3001)
        self.assertEqual(support.request(port, auth_key="wrong" * 6)["code"], 1001)
        self.assertEqual(support.request(port, command=EVIL_COMMAND)["code"], 2004)
        self.assertEqual(support.request(port, command=EVIL_COMMAND + "::x")["code"],
                         1002)
        self.assertEqual(support.request(port, command="::list")["code"], 0)
        self.assertEqual(support.decode_reply(support.exchange(port, b"{nope\n"))["code"],
                         2001)
        # One connection per host: while `sleep` runs, the next one gets 3004.
        with socket.create_connection((server.host, port), timeout=30) as held:
            held.sendall(json.dumps({"auth_key": support.KEY, "command": "ops::sleep",
                                     "arguments": ["4"]}).encode() + b"\n")

            def running(samples):
                os.kill(server.process.pid, signal.SIGHUP)  # a reload writes the file
                return (value(samples, "commands_running") == 1
                        and value(samples, "connections_open") == 1)
            wait_for_samples(path, running, "a running command")
            self.assertEqual(support.request(port)["code"], 3004)
            self.assertEqual(support.decode_reply(support.read_until_closed(held))["code"],
                             0)
        expected = {("default", "true", "0"): 5, ("default", "fail", "3001"): 2,
                    ("default", "true", "1001"): 1, ("default", "unknown", "2004"): 1,
                    ("unknown", "unknown", "1002"): 1, ("none", "::list", "0"): 1,
                    ("none", "none", "2001"): 1, ("ops", "sleep", "0"): 1,
                    ("none", "none", "3004"): 1}
        requests = lambda s: dict(  # noqa: E731
            (tuple(dict(labels)[name] for name in ("cluster", "command", "code")), count)
            for (name, labels), count in s.items()
            if name == "uscmdrelay_requests_total")
        # Written again within a few seconds while the server runs.
        samples = wait_for_samples(path, lambda s: requests(s) == expected,
                                   "the counts of the requests sent")
        self.assertEqual(value(samples, "connections_rejected_total"), 1)
        for cluster, command, count in (("default", "true", 5), ("default", "fail", 2),
                                        ("ops", "sleep", 1)):
            self.assertEqual(value(samples, "command_duration_seconds_count",
                                   cluster=cluster, command=command), count)
        self.assertGreaterEqual(value(samples, "command_duration_seconds_bucket",
                                      cluster="ops", command="sleep", le="+Inf")
                                - value(samples, "command_duration_seconds_bucket",
                                        cluster="ops", command="sleep", le="0.5"), 1)
        self.assertAlmostEqual(value(samples, "start_time_seconds"), started, delta=30)
        self.assertEqual(value(samples, "commands_running"), 0)
        self.assertEqual(value(samples, "connections_open"), 0)
        self.assertNotIn("evil", read(path))  # no client string is ever a label
        # A good reload and a refused one; each is written at once.
        reloads = value(samples, "config_reloads_total", result="success")
        self.assertGreaterEqual(reloads, 1)
        self.assertEqual(value(samples, "config_reloads_total", result="failure"), 0)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for_samples(path, lambda s: value(s, "config_reloads_total",
                                               result="success") == reloads + 1,
                         "a reload")
        with open(os.path.join(server_config_dir(server), "relays.conf"), "a") as handle:
            handle.write("[broken\n")
        os.kill(server.process.pid, signal.SIGHUP)
        samples = wait_for_samples(path, lambda s: value(s, "config_reloads_total",
                                                         result="failure") == 1,
                                   "a refused reload")
        self.assertGreater(value(samples, "config_last_reload_success_timestamp_seconds"),
                           value(samples, "start_time_seconds"))
        self.assertEqual(samples[[key for key in samples
                                  if key[0] == "uscmdrelay_build_info"][0]], 1)
        promtool(self, path)
        self.assertEqual(server.stop(), 0)
        promtool(self, path)  # and as written at exit
        self.assertEqual(os.listdir(os.path.dirname(path)), ["uscmdrelay.prom"])

    def test_the_file_is_replaced_atomically_while_traffic_flows(self):
        path = os.path.join(metrics_dir(self), "uscmdrelay.prom")
        server = self.start(path)
        wait_until(lambda: read(path), "the file written at start-up")
        stop = threading.Event()
        errors = []

        def traffic():
            while not stop.is_set():
                try:
                    support.request(server.port, command="true")
                except Exception as error:  # reported below
                    errors.append(error)
                    return
        thread = threading.Thread(target=traffic)
        thread.start()
        kept, reads = [], 0  # one open file per version seen
        self.addCleanup(lambda: [handle.close() for handle in kept])
        try:
            # Each SIGHUP rewrites the file at once (its reload count changed).
            for reloads in range(1, 21):
                os.kill(server.process.pid, signal.SIGHUP)
                deadline = time.monotonic() + WAIT_SECONDS
                while time.monotonic() < deadline:
                    handle = open(path)
                    text = handle.read()
                    reads += 1
                    samples = parse_metrics(text)  # never a partial file
                    self.assertIn("uscmdrelay_build_info", text)
                    if value(samples, "config_reloads_total", result="success") >= reloads:
                        kept.append(handle)
                        break
                    handle.close()
                else:
                    self.fail("reload %d was not written" % reloads)
        finally:
            stop.set()
            thread.join(60)
        self.assertEqual(errors, [])
        self.assertGreater(reads, 20)
        # Each version is a new file renamed over the old one, not the old one rewritten:
        # the versions read earlier are unlinked files of their own, still whole.
        self.assertEqual(len(set(os.fstat(handle.fileno()).st_ino for handle in kept)), 20)
        for handle in kept[:-1]:
            self.assertEqual(os.fstat(handle.fileno()).st_nlink, 0)
            handle.seek(0)
            parse_metrics(handle.read())
        self.assertEqual(server.stop(), 0)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["uscmdrelay.prom"])

    def test_an_unwritable_directory_costs_one_warning_and_never_the_service(self):
        directory = os.path.join(metrics_dir(self), "not-yet")
        path = os.path.join(directory, "uscmdrelay.prom")
        server = self.start(path)
        for _ in range(3):  # each reload tries to write the file again
            os.kill(server.process.pid, signal.SIGHUP)
            self.assertEqual(support.request(server.port)["code"], 0)
        wait_until(lambda: server.log_text().count("configuration reloaded") == 3,
                   "three reloads")
        log = server.log_text()
        self.assertEqual(len(re.findall(r"WARNING cannot write the metrics file %s: No "
                                        r"such file or directory" % re.escape(path),
                                        log)), 1, log)
        self.assertEqual(log.count("metrics file"), 1, log)
        os.mkdir(directory)
        samples = wait_for_samples(path, lambda s: True, "the file, once writable")
        self.assertEqual(value(samples, "requests_total", cluster="default",
                               command="true", code="0"), 3)
        self.assertIn("INFO metrics file %s written again" % path, server.log_text())


def server_config_dir(server):
    return os.path.dirname(server.log_path)


if __name__ == "__main__":
    unittest.main()
