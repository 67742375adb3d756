#!/usr/bin/env python3
"""Benchmark of the built dist/uscmdrelay.pyz against the local-spawn floor, in one run.

Not a test: `python -m unittest` does not collect it (the name does not start with
`test`), and no figure here is asserted anywhere. Standard library only; Linux only
(memory figures come from /proc). Everything runs on 127.0.0.1, every load loop is
bounded in count and time, and every server started here is stopped by its PID.

What it measures, each server on a fresh temporary config (one key; `true`, `hello`,
and two commands printing 100 MB):
  load     closed loop, one new TCP (or TLS) connection per request sending
           {"auth_key": K, "command": "true"}; a reply counts only with status
           "success" and code 0. Threads spread over 2 forked client processes for c>1.
           The floor, at the same concurrencies and interleaved with the product:
           subprocess.run(["/bin/true"]) in the same number of threads (and processes),
           no network, under the server's interpreter (spawning is slower on old ones).
  start-up spawn -> the port accepts a TCP connection (median of 10, fresh port each),
           against a bare Python listener started the same way.
  version  `uscmdrelay --version` until exit (median of 10), against `python -c pass`.
  memory   idle RSS; RSS with --idle-conns silent connections held ~2 s; RSS after 1,000
           requests and after --long-requests; RSS while a command prints 100 MB.

Usage: python3 tests/benchmark.py [--requests N] [--max-seconds S]
           [--concurrency 1,16,64] [--python PATH] [--tls] [--idle-conns 500]
           [--long-requests 100000] [--skip-long] [--server-arg=ARG ...] [--json]
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYZ = os.path.join(ROOT, "dist", "uscmdrelay.pyz")
HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on (\S+) port (\d+)")

START_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0     # a client's wait for one reply
WARMUP_REQUESTS = 20               # untimed, per client process
CLIENT_PROCESSES = 2               # for c > 1: one Python client tops out near 5k conn/s
MAX_CONCURRENCY = 1024
MAX_REQUESTS = 1000000
MAX_SECONDS = 600.0
STARTS = 10
IDLE_HOLD_SECONDS = 2.0
IDLE_CONNECT_SECONDS = 30.0        # bound on opening the idle connections
LONG_CONCURRENCY = 16
LONG_FIRST = 1000
LONG_CHUNKS = 10                   # RSS is sampled after each chunk of the long run
LONG_MAX_SECONDS = 600.0
SETTLE_SECONDS = 0.3               # before reading an RSS figure
FLOOD_BYTES = 100000000
FLOOD_REPLY_CAP = 256 * 1024 * 1024
FLOOD_SAMPLE_SECONDS = 0.005
FLOOD_TIMEOUT_SECONDS = 120.0
MB = 1024.0 * 1024.0
FLOOR_WORKER = "--floor-worker"  # internal: this file, run under --python, is the floor

RELAYS = """\
[default]
true = /bin/true
hello = /bin/echo hello
flood = head -c {n} /dev/zero
flood_text = sh -c "yes 0123456789abcdef | head -c {n}"
# Streamed to the client as it comes: every byte is sent, nothing is kept.
stream_text = sh -c "yes 0123456789abcdef | head -c {n}"
stream_text.max_output = {n}
""".format(n=FLOOD_BYTES)

# The floor for start-up and idle RSS: the interpreter plus a listening socket, nothing else.
FLOOR_LISTENER = """\
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
time.sleep(600)
"""

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = 127.0.0.1

[server]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
"""

# Issue 7's targets that need no other tool running beside the product.
TARGET_C1_P50_MS = 0.9
TARGET_C1_P99_MS = 2.0
TARGET_STARTUP_MS = 150.0
TARGET_VERSION_MS = 60.0
TARGET_IDLE_RSS_MB = 20.0
TARGET_IDLE_CONNS_ADD_MB = 5.0
TARGET_GROWTH_MB = 2.0
# The anchors measured on this machine (../shared/bench/results/anchors-20261126-144650.txt).
ANCHOR_WEBHOOK_RPS = {16: 1526.5, 64: 1492.3}
ANCHOR_NRPE_TLS_RPS = {16: 122.9}


def _progress(message):
    sys.stderr.write("... %s\n" % message)
    sys.stderr.flush()


# ----------------------------------------------------------------------------- /proc
def _status(pid):
    """VmRSS, VmHWM (kB) and Threads of `pid` as a dict; {} once the process is gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _descendants(pid):
    """PIDs of every process below `pid` (worker processes, running commands)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo and len(found) < 10000:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _cpu_ticks(pid):
    """CPU clock ticks so far: the machine's busy and idle time (/proc/stat), and the
    server's own and its reaped children's (/proc/PID/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    with open("/proc/%d/stat" % pid) as handle:
        stat = handle.read()
    times = [int(value) for value in stat[stat.rindex(")") + 2:].split()[11:15]]
    return {"busy": busy, "idle": fields[3] + fields[4],
            "server": times[0] + times[1], "commands": times[2] + times[3]}


def _cpu_per_request(before, after, requests):
    """Where a load row's CPU went, in ms per request: the server process, the commands
    it ran (counted once reaped), and everything else (the load clients, the kernel's
    network work); and the share of the machine that stayed idle."""
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    spent = dict((name, after[name] - before[name]) for name in after)
    per = lambda ticks: round(ticks * tick_ms / max(requests, 1), 3)  # noqa: E731
    return {"server_ms": per(spent["server"]), "commands_ms": per(spent["commands"]),
            "rest_ms": per(spent["busy"] - spent["server"] - spent["commands"]),
            "idle_share": round(spent["idle"] / float(max(spent["idle"] + spent["busy"],
                                                         1)), 3)}


def _memory(pid):
    """The RSS figures of a server: its own, its peak, its threads, and its descendants'."""
    status = _status(pid)
    below = _descendants(pid)
    return {"rss_kb": status.get("VmRSS"), "hwm_kb": status.get("VmHWM"),
            "threads": status.get("Threads"), "descendants": len(below),
            "descendants_rss_kb": sum(_status(p).get("VmRSS") or 0 for p in below)}


def _listening_ports(pid):
    """TCP ports `pid` listens on, found through its socket inodes in /proc."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as handle:
                lines = handle.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ----------------------------------------------------------------------------- processes
def _stop(process):
    """SIGTERM the one process we started, SIGKILL after a grace; returns its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE_SECONDS)
    return process.returncode


def _free_port():
    sock = socket.socket()
    try:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _accepts(port, timeout=2.0):
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        return sock.connect_ex((HOST, port)) == 0
    finally:
        sock.close()


class Server(object):
    """One uscmdrelay server on an ephemeral 127.0.0.1 port; `stop()` ends it by PID."""

    def __init__(self, bench, name):
        self.log_path = os.path.join(bench.work, "%s.log" % name)
        self._log = open(self.log_path, "wb")
        argv = bench.server_argv("0")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=self._log)
        self.pid = self.process.pid
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self):
        # At --log-level WARNING the server does not log its "listening on" line, so the
        # port also comes from the kernel's socket table.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_text())
            ports = [int(match.group(2))] if match else _listening_ports(self.pid)
            if ports and _accepts(ports[0]):
                return ports[0]
            if self.process.poll() is not None:
                raise RuntimeError("server exited with %s: %s"
                                   % (self.process.returncode, self.log_text()[-500:]))
            time.sleep(0.005)
        raise RuntimeError("server not accepting after %.0f s: %s"
                           % (START_TIMEOUT_SECONDS, self.log_text()[-500:]))

    def log_text(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def check_alive(self):
        """Raises RuntimeError if the server has exited."""
        if self.process.poll() is not None:
            raise RuntimeError("server exited with %s: %s"
                               % (self.process.returncode, self.log_text()[-500:]))

    def stop(self):
        code = _stop(self.process)
        self._log.close()
        return code


# ----------------------------------------------------------------------------- clients
def _relay_client(port, key, tls_ca):
    """Returns one(): a request of `true` on a new connection; raises on any failure."""
    line = (json.dumps({"auth_key": key, "command": "true"}) + "\n").encode("utf-8")
    context = _client_context(tls_ca) if tls_ca else None

    def one():
        sock = socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=HOST)
            sock.sendall(line)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            sock.close()
        reply = json.loads(b"".join(chunks).decode("utf-8"))
        if reply.get("status") != "success" or reply.get("code") != 0:
            raise RuntimeError("status=%r code=%r message=%.80r"
                               % (reply.get("status"), reply.get("code"), reply.get("message")))
    return one


def _floor_client():
    """Returns one(): subprocess.run(["/bin/true"]) as plainly as Python allows."""
    argv = ["/bin/true"]

    def one():
        code = subprocess.run(argv).returncode
        if code != 0:
            raise RuntimeError("/bin/true exited %d" % code)
    return one


def _client_context(ca_file):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.load_verify_locations(ca_file)
    return context


def _percentile(sorted_ms, q):
    """Nearest-rank percentile (ms, rounded) of an ascending list; None when it is empty."""
    if not sorted_ms:
        return None
    rank = int(math.ceil(q / 100.0 * len(sorted_ms))) - 1
    return round(sorted_ms[max(0, min(len(sorted_ms) - 1, rank))], 3)


def _run_threads(factory, n, c, max_seconds, warmup, ready=None):
    """Closed loop: c threads share a budget of n requests; returns the raw samples.

    `ready()`, if given, is called after the warm-up and returns when all the client
    processes of one measurement may start.
    """
    one = factory()
    for _ in range(warmup):
        try:
            one()
        except Exception:
            pass
    if ready is not None:
        ready()
    counter = itertools.count()  # next() is atomic under the GIL
    latencies = [[] for _ in range(c)]
    errors = [0] * c
    first_error = []
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    deadline = time.perf_counter() + max_seconds

    def worker(index):
        mine, clock = latencies[index], time.perf_counter
        while next(counter) < n:
            begin = clock()
            if begin >= deadline:
                return
            try:
                one()
            except Exception as error:  # every failure is an error count
                errors[index] += 1
                if not first_error:
                    first_error.append("%s: %s" % (error.__class__.__name__, error))
                continue
            mine.append((clock() - begin) * 1000.0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(c)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join(max_seconds + REQUEST_TIMEOUT_SECONDS + 60)
    return {"lat": list(itertools.chain.from_iterable(latencies)), "errors": sum(errors),
            "first_error": first_error[0] if first_error else "",
            "t0": started, "t1": time.monotonic()}


def _child(pipe, factory, n, c, max_seconds, warmup, barrier):
    try:
        pipe.send(_run_threads(factory, n, c, max_seconds, warmup,
                               lambda: barrier.wait(60)))
    except BaseException as error:  # report, never leave the parent waiting
        pipe.send({"lat": [], "errors": n, "first_error": "client process: %r" % error,
                   "t0": 0.0, "t1": 0.0})
    finally:
        pipe.close()


def run_load(factory, n, c, max_seconds, warmup=WARMUP_REQUESTS):
    """Runs n requests (or max_seconds) at concurrency c; returns the summary figures."""
    n = max(1, min(n, MAX_REQUESTS))
    c = max(1, min(c, MAX_CONCURRENCY))
    procs = min(CLIENT_PROCESSES, c) if c > 1 else 1
    if procs == 1:
        parts = [_run_threads(factory, n, c, max_seconds, warmup)]
    else:
        parts = _run_forked(factory, n, c, max_seconds, warmup, procs)
    return _summarize(parts, n, c, procs)


def _run_forked(factory, n, c, max_seconds, warmup, procs):
    import multiprocessing
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(procs)
    kids = []
    try:
        for i in range(procs):
            share_n = n // procs + (1 if i < n % procs else 0)
            share_c = c // procs + (1 if i < c % procs else 0)
            reader, writer = context.Pipe(duplex=False)
            kid = context.Process(target=_child, args=(writer, factory, share_n, share_c,
                                                       max_seconds, warmup, barrier))
            kid.daemon = True
            kid.start()
            writer.close()
            kids.append((kid, reader))
        parts = []
        for kid, reader in kids:
            if reader.poll(max_seconds + warmup * REQUEST_TIMEOUT_SECONDS + 180):
                parts.append(reader.recv())
            else:
                parts.append({"lat": [], "errors": 0, "first_error": "client process hung",
                              "t0": 0.0, "t1": 0.0})
        return parts
    finally:
        for kid, reader in kids:
            reader.close()
            kid.join(10)
            if kid.is_alive():
                os.kill(kid.pid, signal.SIGKILL)
                kid.join(10)


def run_floor(python, n, c, max_seconds, warmup=WARMUP_REQUESTS):
    """The floor under `python` (the server's interpreter: spawning costs differ by
    version): n runs of /bin/true in c threads over 1 or 2 processes; the summary."""
    n = max(1, min(n, MAX_REQUESTS))
    c = max(1, min(c, MAX_CONCURRENCY))
    procs = min(CLIENT_PROCESSES, c) if c > 1 else 1
    kids, parts = [], []
    try:
        for i in range(procs):
            share = [n // procs + (1 if i < n % procs else 0),
                     c // procs + (1 if i < c % procs else 0), max_seconds, warmup]
            kids.append(subprocess.Popen(
                [python, os.path.abspath(__file__), FLOOR_WORKER, json.dumps(share)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True))
        # Like a barrier: every process warms up, then they all start together.
        deadline = time.monotonic() + warmup * REQUEST_TIMEOUT_SECONDS + 60
        for kid in kids:
            if not _wait_line(kid.stdout, deadline).startswith("ready"):
                raise RuntimeError("floor worker did not get ready")
        for kid in kids:
            kid.stdin.write("go\n")
            kid.stdin.flush()  # communicate() closes it
        for kid in kids:
            out, _ = kid.communicate(timeout=max_seconds + REQUEST_TIMEOUT_SECONDS + 120)
            parts.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for kid in kids:
            _stop(kid)
    return _summarize(parts, n, c, procs)


def _wait_line(stream, deadline):
    """One line from a child's pipe, or "" once `deadline` (time.monotonic()) passes."""
    import select
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
        return ""
    return stream.readline()


def _floor_worker(share):
    """The body of a floor process: prints "ready", waits for "go", prints the samples."""
    n, c, max_seconds, warmup = json.loads(share)

    def ready():
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
    result = _run_threads(_floor_client, n, c, max_seconds, warmup, ready)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _summarize(parts, n, c, procs):
    ms = sorted(itertools.chain.from_iterable(part["lat"] for part in parts))
    timed = [part for part in parts if part["t1"] > 0]
    elapsed = (max(p["t1"] for p in timed) - min(p["t0"] for p in timed)) if timed else 0.0
    errors = sum(part["errors"] for part in parts)
    return {"concurrency": c, "client_processes": procs, "requested": n, "ok": len(ms),
            "errors": errors,
            "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
            "elapsed_s": round(elapsed, 3),
            "rps": round(len(ms) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": _percentile(ms, 50), "p90_ms": _percentile(ms, 90),
            "p99_ms": _percentile(ms, 99), "max_ms": _percentile(ms, 100),
            "stopped_by_time": len(ms) + errors < n}


# ----------------------------------------------------------------------------- benchmark
class Bench(object):
    """One benchmark run: its temporary directory, config, certificate and results."""

    def __init__(self, args):
        self.args = args
        self.python = args.python
        self.work = tempfile.mkdtemp(prefix="uscmdrelay-bench-")
        # A private copy: the whole run measures one build even if dist/ is rebuilt meanwhile.
        self.pyz = os.path.join(self.work, "uscmdrelay.pyz")
        shutil.copyfile(args.pyz, self.pyz)
        with open(self.pyz, "rb") as handle:
            self.pyz_sha256 = hashlib.sha256(handle.read()).hexdigest()
        self.config_dir = os.path.join(self.work, "config")
        os.mkdir(self.config_dir)
        self.key = "bench-" + os.urandom(16).hex()
        auth = os.path.join(self.config_dir, "auth.conf")
        with open(auth, "w") as handle:
            handle.write("[%s]\ndescription = benchmark\nauth_clusters = default\n" % self.key)
        os.chmod(auth, 0o600)
        with open(os.path.join(self.config_dir, "relays.conf"), "w") as handle:
            handle.write(RELAYS)
        self.tls_cert = self.tls_key = None
        if args.tls:
            self.tls_cert, self.tls_key = _make_certificate(self.work)
        # The idle connections count against --max-connections and must outlive the hold.
        self.max_connections = max(256, args.idle_conns + max(args.concurrency) + 64)
        self.request_timeout = max(30, int(IDLE_HOLD_SECONDS + IDLE_CONNECT_SECONDS) + 10)
        self.results = {}

    def server_argv(self, port):
        argv = [self.python, self.pyz, "--config-dir", self.config_dir, "--host", HOST,
                "--port", port, "--log-level", "WARNING",
                "--max-connections", str(self.max_connections),
                # Every load client and idle connection comes from one address.
                "--max-connections-per-host", "0",
                "--request-timeout", str(self.request_timeout),
                "--max-output", str(self.args.max_output)]
        if self.tls_cert:
            argv += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        return argv + self.args.server_arg

    def close(self):
        shutil.rmtree(self.work, True)

    # ------------------------------------------------------------------ the parts
    def meta(self):
        version = subprocess.run([self.python, self.pyz, "--version"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 universal_newlines=True, timeout=30).stdout.strip()
        python = subprocess.run([self.python, "-c", "import sys; print(sys.version.split()[0])"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                universal_newlines=True, timeout=30).stdout.strip()
        self.results["meta"] = {
            "uscmdrelay": version, "pyz": self.args.pyz, "pyz_sha256": self.pyz_sha256[:12],
            "server_python": "%s %s" % (python, self.python),
            "client_python": "%s %s" % (platform.python_version(), sys.executable),
            "tls": bool(self.tls_cert), "nproc": os.cpu_count(), "kernel": platform.release(),
            "machine": platform.machine(), "requests": self.args.requests,
            "max_seconds": self.args.max_seconds, "max_output": self.args.max_output,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def load(self):
        """Floor and product at each concurrency, interleaved; the idle figures first."""
        args = self.args
        server = Server(self, "load")
        try:
            time.sleep(SETTLE_SECONDS)
            self.results["idle"] = _memory(server.pid)
            self.results["idle_conns"] = self._idle_conns(server)
            server.check_alive()
            port, key, ca = server.port, self.key, self.tls_cert
            rows = []
            for c in args.concurrency:
                _progress("floor c=%d" % c)
                row = run_floor(self.python, args.requests, c, args.max_seconds)
                row["target"] = "floor"
                rows.append(row)
                _progress("uscmdrelay c=%d" % c)
                before = _cpu_ticks(server.pid)
                row = run_load(lambda: _relay_client(port, key, ca), args.requests, c,
                               args.max_seconds)
                # The ticks include the warm-up requests (each client process's).
                row["cpu"] = _cpu_per_request(
                    before, _cpu_ticks(server.pid), row["ok"] + row["errors"]
                    + WARMUP_REQUESTS * row["client_processes"])
                row["target"] = "uscmdrelay"
                rows.append(row)
                server.check_alive()
            floors = dict((r["concurrency"], r["rps"]) for r in rows if r["target"] == "floor")
            for row in rows:
                floor = floors.get(row["concurrency"])
                row["x_floor"] = round(row["rps"] / floor, 3) if floor else None
            self.results["load"] = rows
            self.results["after_load"] = _memory(server.pid)
        finally:
            server.stop()

    def _idle_conns(self, server):
        """Holds --idle-conns silent connections ~2 s; the server's RSS before and during."""
        _progress("%d idle connections" % self.args.idle_conns)
        before = _memory(server.pid)
        socks, failed = [], 0
        deadline = time.monotonic() + IDLE_CONNECT_SECONDS
        try:
            for _ in range(self.args.idle_conns):
                if time.monotonic() > deadline:
                    break
                try:
                    socks.append(socket.create_connection((HOST, server.port), timeout=5))
                except OSError:
                    failed += 1
            time.sleep(IDLE_HOLD_SECONDS)
            during = _memory(server.pid)
            # Check a new client is still served while they are held.
            started = time.perf_counter()
            try:
                _relay_client(server.port, self.key, self.tls_cert)()
                served = round((time.perf_counter() - started) * 1000.0, 2)
            except Exception as error:
                served = "failed: %s" % error
            # Alive means nothing came back: neither an answer (2006 at --request-timeout,
            # 3004 beyond --max-connections) nor an end of file.
            alive = answered = 0
            for sock in socks:
                sock.setblocking(False)
                try:
                    answered += 1 if sock.recv(1) else 0
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
        finally:
            for sock in socks:
                sock.close()
        return {"wanted": self.args.idle_conns, "opened": len(socks), "connect_failed": failed,
                "alive_after_hold": alive, "answered_during_hold": answered,
                "hold_s": IDLE_HOLD_SECONDS,
                "rss_before_kb": before["rss_kb"], "rss_during_kb": during["rss_kb"],
                "threads_during": during["threads"],
                "descendants_rss_during_kb": during["descendants_rss_kb"],
                "added_kb": during["rss_kb"] - before["rss_kb"]
                if during["rss_kb"] and before["rss_kb"] else None,
                "new_request_ms_while_held": served}

    def long_run(self):
        """RSS after 1,000 requests, then after each chunk up to --long-requests."""
        total = max(LONG_FIRST + 1, min(self.args.long_requests, MAX_REQUESTS))
        _progress("long run: %d requests at c=%d" % (total, LONG_CONCURRENCY))
        server = Server(self, "long")
        try:
            factory = (lambda: _relay_client(server.port, self.key, self.tls_cert))
            first = run_load(factory, LONG_FIRST, LONG_CONCURRENCY, LONG_MAX_SECONDS, warmup=0)
            time.sleep(SETTLE_SECONDS)
            samples = [{"requests": first["ok"] + first["errors"],
                        "rss_kb": _status(server.pid).get("VmRSS")}]
            ok, errors = first["ok"], first["errors"]
            chunk = max(1000, (total - LONG_FIRST + LONG_CHUNKS - 1) // LONG_CHUNKS)
            deadline = time.monotonic() + min(LONG_MAX_SECONDS,
                                              max(60.0, total / 200.0))
            done = LONG_FIRST
            while done < total and time.monotonic() < deadline:
                n = min(chunk, total - done)
                part = run_load(factory, n, LONG_CONCURRENCY,
                                max(1.0, deadline - time.monotonic()), warmup=0)
                ok, errors = ok + part["ok"], errors + part["errors"]
                done += n
                server.check_alive()
                time.sleep(SETTLE_SECONDS)
                samples.append({"requests": ok + errors,
                                "rss_kb": _status(server.pid).get("VmRSS")})
            first_kb, last_kb = samples[0]["rss_kb"], samples[-1]["rss_kb"]
            self.results["long"] = {
                "concurrency": LONG_CONCURRENCY, "requested": total, "ok": ok,
                "errors": errors, "rss_after_first_kb": first_kb,
                "rss_after_all_kb": last_kb,
                "growth_kb": last_kb - first_kb if first_kb and last_kb else None,
                "samples": samples, "hwm_kb": _status(server.pid).get("VmHWM"),
            }
        finally:
            server.stop()

    def flood(self):
        """A command printing 100 MB, each on a fresh server (VmHWM is a lifetime peak)."""
        rows = []
        for command in ("flood", "flood_text", "stream_text"):
            _progress("%s: a command printing %d bytes" % (command, FLOOD_BYTES))
            server = Server(self, command)
            try:
                time.sleep(SETTLE_SECONDS)
                rows.append(self._flood_one(server, command))
            finally:
                server.stop()
        self.results["flood"] = rows

    def _flood_one(self, server, command):
        idle = _status(server.pid)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _status(server.pid).get("VmRSS") or 0)
                done.wait(FLOOD_SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample)
        sampler.daemon = True
        sampler.start()
        started = time.perf_counter()
        reply, error, size = None, "", 0
        try:
            reply, size = self._flood_request(server.port, command)
        except Exception as exc:
            error = "%s: %s" % (exc.__class__.__name__, exc)
        finally:
            seconds = time.perf_counter() - started
            done.set()
            sampler.join(10)
        hwm = _status(server.pid).get("VmHWM")
        kept = 0 if command == "stream_text" else 2 * self.args.max_output  # streamed: none
        bound_kb = (idle.get("VmRSS") or 0) + (kept + 10 * 1024 * 1024) // 1024
        reply = reply or {}
        return {"command": command, "error": error, "seconds": round(seconds, 3),
                "code": reply.get("code"), "truncated": reply.get("truncated"),
                "stdout_chars": reply.get("streamed_chars", len(reply.get("stdout") or "")),
                "reply_bytes": size, "streamed": bool(reply.get("streamed")),
                "mb_per_s": round(size / MB / seconds, 1) if seconds else None,
                "idle_rss_kb": idle.get("VmRSS"), "peak_sampled_rss_kb": peak[0],
                "hwm_kb": hwm, "bound_kb": bound_kb,
                "within_bound": bool(hwm and max(hwm, peak[0]) <= bound_kb)}

    def _flood_request(self, port, command):
        request = {"auth_key": self.key, "command": command}
        if command == "stream_text":
            request["stream"] = True
        line = (json.dumps(request) + "\n").encode("utf-8")
        sock = socket.create_connection((HOST, port), timeout=FLOOD_TIMEOUT_SECONDS)
        chunks, size, streamed = [], 0, 0
        try:
            if self.tls_cert:
                sock = _client_context(self.tls_cert).wrap_socket(sock, server_hostname=HOST)
            sock.sendall(line)
            deadline = time.monotonic() + FLOOD_TIMEOUT_SECONDS
            while size < FLOOD_REPLY_CAP and time.monotonic() < deadline:
                data = sock.recv(1 << 20)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if "stream" in request:
                    # A streaming client: each event decoded as it comes (`call` does the
                    # same), keeping only the unfinished line.
                    lines = b"".join(chunks).split(b"\n")
                    chunks = [lines.pop()]
                    for event in lines:
                        event = json.loads(event.decode("utf-8"))
                        if "stream" not in event:
                            event["streamed_chars"] = streamed
                            return event, size
                        streamed += len(event["data"])
        finally:
            sock.close()
        return json.loads(b"".join(chunks).decode("utf-8")), size

    def startup(self):
        """Spawn -> accepting, for the product and for a bare Python listener."""
        _progress("start-up x%d (and the floor)" % STARTS)
        self.results["startup"] = {
            "uscmdrelay": _time_startups(self.server_argv),
            "floor": _time_startups(lambda port: [self.python, "-c", FLOOR_LISTENER, port]),
        }

    def version(self):
        """`--version` until exit, against `python -c pass`."""
        _progress("--version x%d (and the floor)" % STARTS)
        self.results["version"] = {
            "uscmdrelay": _time_runs([self.python, self.pyz, "--version"]),
            "floor": _time_runs([self.python, "-c", "pass"]),
        }


def _time_startups(make_argv):
    """Median ms from spawn until a fresh port accepts, over STARTS starts; each stopped."""
    samples, errors, first_error = [], 0, ""
    for _ in range(STARTS):
        port = _free_port()
        with tempfile.TemporaryFile() as log:
            started = time.perf_counter()
            process = subprocess.Popen(make_argv(str(port)), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log)
            error = None
            try:
                while True:
                    if _accepts(port):
                        samples.append((time.perf_counter() - started) * 1000.0)
                        break
                    if process.poll() is not None:
                        error = "exited with %d before accepting" % process.returncode
                        break
                    if time.perf_counter() - started > START_TIMEOUT_SECONDS:
                        error = "not accepting after %.0f s" % START_TIMEOUT_SECONDS
                        break
                    time.sleep(0.001)
            finally:
                _stop(process)
            if error:
                errors += 1
                if not first_error:
                    log.seek(0)
                    first_error = error + ": " + log.read()[-300:].decode("utf-8", "replace")
    return _median_summary(samples, errors, first_error)


def _time_runs(argv):
    """Median ms of running argv to completion, over STARTS runs."""
    samples, errors, first_error = [], 0, ""
    for _ in range(STARTS):
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=30)
        except subprocess.TimeoutExpired:
            errors += 1
            first_error = first_error or "timed out"
            continue
        elapsed = (time.perf_counter() - started) * 1000.0
        if done.returncode != 0:
            errors += 1
            first_error = first_error or done.stdout[-300:].decode("utf-8", "replace")
            continue
        samples.append(elapsed)
    return _median_summary(samples, errors, first_error)


def _median_summary(samples, errors, first_error):
    ordered = sorted(samples)
    return {"ok": len(samples), "errors": errors, "first_error": first_error,
            "median_ms": round(statistics.median(ordered), 2) if ordered else None,
            "min_ms": round(ordered[0], 2) if ordered else None,
            "max_ms": round(ordered[-1], 2) if ordered else None,
            "samples_ms": [round(x, 2) for x in samples]}


def _make_certificate(directory):
    """A throwaway self-signed P-256 certificate for 127.0.0.1; returns (cert, key) paths."""
    if shutil.which("openssl") is None:
        raise SystemExit("benchmark: --tls needs the openssl binary")
    config = os.path.join(directory, "openssl.cnf")
    with open(config, "w") as handle:
        handle.write(OPENSSL_CONFIG)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    done = subprocess.run(
        ["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-keyout", key, "-out", cert, "-days", "2",
         "-config", config, "-extensions", "server"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit("benchmark: openssl failed: %s" % done.stdout.strip())
    os.chmod(key, 0o600)
    return cert, key


# ----------------------------------------------------------------------------- report
def _mb(kb):
    return "-" if kb is None else "%.1f MB" % (kb / 1024.0)


def _ms(value):
    return "-" if value is None else "%.2f" % value


def _verdict(ok):
    return "ok" if ok else "MISS"


def report(results):
    """The human-readable table of `results`, as a string."""
    out = []
    meta = results["meta"]
    out.append("%s (sha256 %s); server and floor on Python %s; load clients on Python %s"
               % (meta["uscmdrelay"], meta["pyz_sha256"], meta["server_python"],
                  meta["client_python"]))
    out.append("%s, %s cores, kernel %s; TLS %s; %d requests or %.0f s per row; %s"
               % (meta["machine"], meta["nproc"], meta["kernel"],
                  "on (P-256, full handshake per request)" if meta["tls"] else "off",
                  meta["requests"], meta["max_seconds"], meta["started"]))
    out.append("")
    out.append("%-34s %4s %9s %8s %8s %8s %6s %7s" % (
        "what (one new connection per request)", "c", "req/s", "p50 ms", "p90 ms", "p99 ms",
        "errors", "x floor"))
    labels = {"floor": "floor: subprocess.run(/bin/true)",
              "uscmdrelay": "uscmdrelay `true`" + (" over TLS" if meta["tls"] else "")}
    for row in results.get("load", []):
        out.append("%-34s %4d %9.1f %8s %8s %8s %6d %7s%s" % (
            labels[row["target"]], row["concurrency"], row["rps"], _ms(row["p50_ms"]),
            _ms(row["p90_ms"]), _ms(row["p99_ms"]), row["errors"],
            "%.2f" % row["x_floor"] if row["x_floor"] is not None else "-",
            "  (%s)" % row["first_error"][:100] if row["first_error"] else ""))
    cpu_rows = [row for row in results.get("load", []) if row.get("cpu")]
    if cpu_rows:
        out.append("CPU per request (ms): the server, its commands, everything else (load "
                   "clients, kernel); the machine's idle share")
        for row in cpu_rows:
            cpu = row["cpu"]
            out.append("    c=%-3d server %.3f  commands %.3f  rest %.3f  total %.3f  idle %.0f %%"
                       % (row["concurrency"], cpu["server_ms"], cpu["commands_ms"],
                          cpu["rest_ms"], cpu["server_ms"] + cpu["commands_ms"]
                          + cpu["rest_ms"], cpu["idle_share"] * 100))
    out.append("")
    for name, label in (("startup", "start-up, spawn -> accepting"),
                        ("version", "--version, spawn -> exit")):
        part = results.get(name)
        if not part:
            continue
        mine, floor = part["uscmdrelay"], part["floor"]
        ratio = ("x%.2f" % (mine["median_ms"] / floor["median_ms"])
                 if mine["median_ms"] and floor["median_ms"] else "-")
        out.append("%-34s median %s ms (min %s, max %s; %d failed); floor (%s) %s ms, %s"
                   % (label, mine["median_ms"], mine["min_ms"], mine["max_ms"], mine["errors"],
                      "bare Python listener" if name == "startup" else "python -c pass",
                      floor["median_ms"], ratio))
        if mine["first_error"]:
            out.append("    first failure: %s" % mine["first_error"].strip()[:200])
    idle = results.get("idle")
    if idle:
        out.append("%-34s %s (%d threads; descendants %d, %s)" % (
            "idle RSS", _mb(idle["rss_kb"]), idle["threads"] or 0, idle["descendants"],
            _mb(idle["descendants_rss_kb"])))
    conns = results.get("idle_conns")
    if conns:
        out.append("%-34s %s -> %s (%s added), %d/%d alive after %.0f s, %s threads; "
                   "a new request meanwhile: %s ms" % (
                       "%d idle connections" % conns["wanted"], _mb(conns["rss_before_kb"]),
                       _mb(conns["rss_during_kb"]), _mb(conns["added_kb"]),
                       conns["alive_after_hold"], conns["wanted"], conns["hold_s"],
                       conns["threads_during"], conns["new_request_ms_while_held"]))
    after = results.get("after_load")
    if after:
        out.append("%-34s %s (peak %s, %s threads)" % (
            "RSS after the load rows", _mb(after["rss_kb"]), _mb(after["hwm_kb"]),
            after["threads"]))
    long_run = results.get("long")
    if long_run:
        out.append("%-34s %s after %d requests, %s after %d (growth %s; %d errors)" % (
            "RSS over a long run (c=%d)" % long_run["concurrency"],
            _mb(long_run["rss_after_first_kb"]), long_run["samples"][0]["requests"],
            _mb(long_run["rss_after_all_kb"]), long_run["samples"][-1]["requests"],
            _mb(long_run["growth_kb"]), long_run["errors"]))
        out.append("    RSS by requests served: " + ", ".join(
            "%d: %.1f" % (s["requests"], (s["rss_kb"] or 0) / 1024.0)
            for s in long_run["samples"]))
    for row in results.get("flood", []):
        if row.get("streamed"):
            out.append("%-34s code %s, %d chars streamed, %.1f MB on the wire in %.1f s "
                       "(%s MB/s); RSS idle %s, peak sampled %s, VmHWM %s; bound (idle + "
                       "10 MB) %s: %s%s" % (
                           "`%s` streams %d MB" % (row["command"], FLOOD_BYTES // 1000000),
                           row["code"], row["stdout_chars"], row["reply_bytes"] / MB,
                           row["seconds"], row["mb_per_s"], _mb(row["idle_rss_kb"]),
                           _mb(row["peak_sampled_rss_kb"]), _mb(row["hwm_kb"]),
                           _mb(row["bound_kb"]),
                           "within" if row["within_bound"] else "EXCEEDED",
                           "  (%s)" % row["error"] if row["error"] else ""))
            continue
        out.append("%-34s code %s, truncated %s, stdout %d chars, reply %.1f MB in %.1f s; "
                   "RSS idle %s, peak sampled %s, VmHWM %s; bound (idle + 2 x %d + 10 MB) %s: %s%s"
                   % ("`%s` prints %d MB" % (row["command"], FLOOD_BYTES // 1000000),
                      row["code"], row["truncated"], row["stdout_chars"],
                      row["reply_bytes"] / MB, row["seconds"], _mb(row["idle_rss_kb"]),
                      _mb(row["peak_sampled_rss_kb"]), _mb(row["hwm_kb"]),
                      meta["max_output"], _mb(row["bound_kb"]),
                      "within" if row["within_bound"] else "EXCEEDED",
                      "  (%s)" % row["error"] if row["error"] else ""))
    for failure in results.get("failures", []):
        out.append("FAILED %s" % failure)
    targets = results.get("targets")
    if targets:
        out.append("")
        out.append("Issue 7 targets measurable without the other tools (figures above):")
        for target in targets:
            out.append("  %-4s %-58s %s" % (_verdict(target["ok"]), target["target"],
                                           target["measured"]))
    return "\n".join(out)


def check_targets(results):
    """Issue 7's absolute targets against this run's figures; a list of dicts."""
    targets = []

    def add(name, measured, ok):
        targets.append({"target": name, "measured": measured, "ok": bool(ok)})

    tls = results["meta"]["tls"]
    rows = dict((r["concurrency"], r) for r in results.get("load", [])
                if r["target"] == "uscmdrelay")
    if 1 in rows and not tls and rows[1]["p50_ms"] is not None:
        add("c=1 p50 <= %.1f ms" % TARGET_C1_P50_MS, "%.2f ms" % rows[1]["p50_ms"],
            rows[1]["p50_ms"] <= TARGET_C1_P50_MS)
        add("c=1 p99 <= %.1f ms" % TARGET_C1_P99_MS, "%.2f ms" % rows[1]["p99_ms"],
            rows[1]["p99_ms"] <= TARGET_C1_P99_MS)
    anchors = ANCHOR_NRPE_TLS_RPS if tls else ANCHOR_WEBHOOK_RPS
    factor = 3.0 if tls else 1.0
    for c in sorted(anchors):
        if c in rows:
            want = factor * anchors[c]
            add("c=%d >= %.0fx %s (anchor run: %.0f req/s)"
                % (c, factor, "NRPE-with-TLS" if tls else "webhook", want),
                "%.0f req/s (not side by side)" % rows[c]["rps"], rows[c]["rps"] >= want)
    startup = results.get("startup", {}).get("uscmdrelay", {}).get("median_ms")
    if startup is not None:
        add("start-up <= %.0f ms" % TARGET_STARTUP_MS, "%.1f ms" % startup,
            startup <= TARGET_STARTUP_MS)
    version = results.get("version", {}).get("uscmdrelay", {}).get("median_ms")
    if version is not None:
        add("--version <= %.0f ms" % TARGET_VERSION_MS, "%.1f ms" % version,
            version <= TARGET_VERSION_MS)
    idle = results.get("idle", {}).get("rss_kb")
    if idle:
        add("idle RSS <= %.0f MB" % TARGET_IDLE_RSS_MB, _mb(idle),
            idle / 1024.0 <= TARGET_IDLE_RSS_MB)
    conns = results.get("idle_conns")
    if conns and conns["added_kb"] is not None:
        add("%d idle conns add <= %.0f MB, all alive" % (conns["wanted"],
                                                         TARGET_IDLE_CONNS_ADD_MB),
            "%s, %d alive" % (_mb(conns["added_kb"]), conns["alive_after_hold"]),
            conns["added_kb"] / 1024.0 <= TARGET_IDLE_CONNS_ADD_MB
            and conns["alive_after_hold"] == conns["wanted"])
    long_run = results.get("long")
    if long_run and long_run["growth_kb"] is not None:
        add("RSS growth %d -> %d requests <= %.0f MB" % (
            long_run["samples"][0]["requests"], long_run["samples"][-1]["requests"],
            TARGET_GROWTH_MB), _mb(long_run["growth_kb"]),
            long_run["growth_kb"] / 1024.0 <= TARGET_GROWTH_MB)
    for row in results.get("flood", []):
        add("`%s`: peak RSS <= idle + %s10 MB" % (
            row["command"], "" if row.get("streamed") else "2 x max-output + "),
            "%s of %s" % (_mb(max(row["hwm_kb"] or 0, row["peak_sampled_rss_kb"])),
                          _mb(row["bound_kb"])),
            row["within_bound"] and not row["error"])
    return targets


# ----------------------------------------------------------------------------- main
def _concurrency_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("not a comma-separated list of integers: %r" % text)
    if not values or any(not 1 <= v <= MAX_CONCURRENCY for v in values):
        raise argparse.ArgumentTypeError("each concurrency must be 1..%d" % MAX_CONCURRENCY)
    return values


def _positive(kind, low, high):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("must be %s..%s" % (low, high))
        return value
    return convert


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Table on stdout; with --json the table goes to stderr and one JSON object "
               "of every figure to stdout.")
    parser.add_argument("--requests", type=_positive(int, 1, MAX_REQUESTS), default=2000,
                        help="requests per load row (default 2000)")
    parser.add_argument("--max-seconds", type=_positive(float, 0.1, MAX_SECONDS), default=20.0,
                        help="time limit of each load row (default 20)")
    parser.add_argument("--concurrency", type=_concurrency_list, default=[1, 16, 64],
                        help="comma-separated client counts (default 1,16,64)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter of the server (default: this one)")
    parser.add_argument("--pyz", default=PYZ, help="the zipapp to measure (default: %(default)s)")
    parser.add_argument("--tls", action="store_true",
                        help="serve TLS with a throwaway P-256 certificate (needs openssl)")
    parser.add_argument("--idle-conns", type=_positive(int, 0, 5000), default=500,
                        help="idle connections held for the RSS figure (default 500)")
    parser.add_argument("--long-requests", type=_positive(int, LONG_FIRST + 1, MAX_REQUESTS),
                        default=100000, help="requests of the leak run (default 100000)")
    parser.add_argument("--skip-long", action="store_true", help="skip the leak run")
    parser.add_argument("--max-output", type=_positive(int, 1, 1 << 30), default=1048576,
                        help="the server's --max-output (default 1048576)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for every server started, repeatable; "
                             "write it with '=': --server-arg=--metrics-file=/tmp/m.prom")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object of all figures on stdout")
    return parser.parse_args(argv)


def _raise_fd_limit(wanted):
    """Raises the soft RLIMIT_NOFILE (inherited by the servers) to fit the idle test."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FLOOR_WORKER] and len(argv) == 2:
        return _floor_worker(argv[1])
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("benchmark: needs Linux (/proc)", file=sys.stderr)
        return 2
    if not os.path.isfile(args.pyz):
        print("benchmark: %s not found; run python3 build_zipapp.py" % args.pyz,
              file=sys.stderr)
        return 2
    _raise_fd_limit(args.idle_conns * 2 + 2 * MAX_CONCURRENCY + 256)
    bench = Bench(args)
    failures = []
    try:
        bench.meta()
        parts = [bench.load, bench.startup, bench.version]
        parts += [] if args.skip_long else [bench.long_run]
        for part in parts + [bench.flood]:
            try:
                part()
            except Exception as error:  # report it and measure the rest
                failures.append("%s: %s: %s" % (part.__name__, error.__class__.__name__, error))
                _progress("FAILED " + failures[-1])
    finally:
        bench.close()
    results = bench.results
    results["failures"] = failures
    results["targets"] = check_targets(results)
    text = report(results)
    if args.json:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        print(json.dumps(results, sort_keys=True))
    else:
        print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
