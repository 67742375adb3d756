"""Per-command policy (issue 6): `NAME.SETTING` lines, codes 2007 and 3005, `::list`,
`configtest --list`.

`Policy.check` is unit-tested with a table of cases; every setting is then exercised end
to end against the real server process over sockets on 127.0.0.1: the built
dist/uscmdrelay.pyz for everything, the source tree for a representative part (the
`Source*` classes). Bad settings are checked where users meet them: the server refusing
to start, and a SIGHUP reload refused while the old configuration keeps serving. (The
exact text of each bad setting's config error is pinned in test_config.)
"""

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
import unittest

from tests import support
from tests.support import KEY, OTHER_KEY, make_config_dir, start_server
from uscmdrelay import cli
from uscmdrelay.policy import Policy
from uscmdrelay.protocol import RelayError

ALL_KEY = "all-key-0123456789abcdef"
GHOST_KEY = "ghost-key-0123456789abcdef"
WRONG_KEY = "wrong-key-fedcba9876543210"

AUTH = support.DEFAULT_AUTH + """
[{all}]
description = all clusters
auth_clusters = *

[{ghost}]
description = granted only a cluster nobody defined
auth_clusters = nosuch
""".format(all=ALL_KEY, ghost=GHOST_KEY)

PREFIX = "arguments not allowed by this command's policy: "
WAIT_SECONDS = 15.0
RAN_FIELDS = {"status", "message", "code", "exit_code", "stdout", "stderr", "duration_ms",
              "truncated"}
NOT_RAN_FIELDS = {"status", "message", "code"}
LIST_FIELDS = {"status", "message", "code", "commands"}

# `{dir}` is the config dir. Some settings come before the command they configure: they
# apply once the whole section is read.
RELAYS = """\
[default]
short.timeout = 1
short = sh -c "sleep 30 & echo $! > {dir}/short.pid; echo started; sleep 30"
long = sleep 2
long.timeout = 8
unlimited = sleep 2
unlimited.timeout = 0
plain = sleep 2

counted = /bin/echo
counted.min_args = 1
counted.max_args = 2
word = /bin/echo
word.arg_pattern = [a-z]+
either = /bin/echo
either.arg_pattern = start|stop
service = /bin/echo
service.arg_choices = start stop status

ran_min = sh -c "touch {dir}/ran_min" ran_min
ran_min.min_args = 1
ran_max = sh -c "touch {dir}/ran_max" ran_max
ran_max.max_args = 0
ran_pattern = sh -c "touch {dir}/ran_pattern" ran_pattern
ran_pattern.arg_pattern = [a-z]+
ran_choices = sh -c "touch {dir}/ran_choices" ran_choices
ran_choices.arg_choices = a b

once = sh -c "touch {dir}/once.started; while [ ! -e {dir}/once.release ]; do sleep 0.02; done; echo finished"
once.max_running = 1
once.timeout = 20

pipe = echo hello | tr a-z A-Z
shelled = echo hello | tr a-z A-Z
shelled.shell = yes
say = echo
say.shell = yes
unshelled = echo hello | tr a-z A-Z
unshelled.shell = no
literal = echo
literal.shell = no

where = pwd
where.cwd = {dir}/work
here = pwd
gone = pwd
gone.cwd = {dir}/no-such-dir
gone.max_running = 1

true = /bin/true

[ops]
restart = /bin/echo restarting
restart.min_args = 1
restart.max_args = 1
restart.arg_choices = web db
"""

# A small configuration whose `::list` and `configtest --list` can be written out in full.
LIST_RELAYS = """\
[default]
true = /bin/true
greet = sh -c "touch {dir}/greeted; echo hi" greet
greet.description = says hi
greet.max_args = 0
echo = /bin/echo
echo.min_args = 1

[ops]
restart.description = restart one service
restart = /bin/echo restarting
restart.min_args = 1
restart.max_args = 1
restart.arg_choices = web db
backup = /bin/echo backing up
backup.description = nightly backup
backup.timeout = 1.5
backup.min_args = 0
backup.max_args = 2
backup.arg_pattern = [a-z0-9_-]+
backup.arg_choices = home etc
backup.max_running = 1
backup.max_output = 4096
backup.shell = yes
backup.cwd = /tmp

[unused]
true = /bin/true
"""

OPS_LIST = [
    {"command": "ops::backup", "description": "nightly backup", "min_args": 0,
     "max_args": 2},
    {"command": "ops::restart", "description": "restart one service", "min_args": 1,
     "max_args": 1},
]
DEFAULT_LIST = [
    {"command": "default::echo", "description": None, "min_args": 1, "max_args": None},
    {"command": "default::greet", "description": "says hi", "min_args": None,
     "max_args": 0},
    {"command": "default::true", "description": None, "min_args": None, "max_args": None},
]
UNUSED_LIST = [
    {"command": "unused::true", "description": None, "min_args": None, "max_args": None},
]


def relay_config(test, relays=RELAYS, auth=AUTH):
    """A config dir for `test` holding `relays` with {dir} filled in, and a work/ dir."""
    directory = make_config_dir(test, auth=auth, relays=None)
    os.mkdir(os.path.join(directory, "work"))
    return support.write_config(directory, auth=None,
                                relays=relays.replace("{dir}", directory))


def policy(**settings):
    """A Policy with `settings` given as their relays.conf text."""
    result = Policy()
    for name, text in settings.items():
        result.set(name, text)
    result.validate()
    return result


def wait_until(predicate, timeout=WAIT_SECONDS):
    """Polls `predicate` until true; returns its last value (false on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def alive(pid):
    """True while `pid` is a running (not zombie) process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pid_in(path):
    """Kills the process whose PID a test command wrote to `path`, if any."""
    try:
        with open(path) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def touch(path):
    with open(path, "a"):
        pass


def in_parallel(*calls):
    """Runs each zero-argument callable in its own thread; returns their results."""
    results = [None] * len(calls)

    def run(index):
        try:
            results[index] = calls[index]()
        except Exception as error:  # reported by the caller's assertions
            results[index] = error
    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(support.REPLY_TIMEOUT + 5)
    return results


def run_uscmdrelay(test, args, program="pyz", timeout=20.0):
    """Runs uscmdrelay expecting it to exit; returns (status, stdout, stderr)."""
    process = subprocess.Popen(support.command(program) + list(args),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True,
                               env=support.environment(program))

    def stop():
        if process.poll() is None:
            process.kill()
            process.wait()
    test.addCleanup(stop)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        test.fail("uscmdrelay %s did not exit within %g s" % (" ".join(args), timeout))
    return process.returncode, out, err


def settings_listing(text):
    """Parses `configtest --list` output: {"cluster::name": (line, {setting: value})}."""
    commands = {}
    current = None
    for line in text.splitlines():
        if line.startswith("    ") and current is not None:
            label, _, value = line.strip().partition(" ")
            current[label] = value.strip()
        elif "::" in line and " = " in line and not line.startswith(" "):
            name, _, command_line = line.partition(" = ")
            current = {}
            commands[name] = (command_line, current)
        else:
            current = None
    return commands


# ---------------------------------------------------------------------------------------
# Policy.check, without a server


class PolicyCheckTest(unittest.TestCase):

    # (case, settings, arguments, message after PREFIX; None: allowed)
    CASES = [
        ("no settings allow anything", {}, ["; rm -rf /", "", "-x"], None),
        ("no settings allow no arguments", {}, [], None),
        ("min_args 1, none given", {"min_args": "1"}, [],
         "takes at least 1 argument, got 0"),
        ("min_args 2, one given", {"min_args": "2"}, ["a"],
         "takes at least 2 arguments, got 1"),
        ("min_args 0 allows none", {"min_args": "0"}, [], None),
        ("max_args 0, one given", {"max_args": "0"}, ["a"],
         "takes at most 0 arguments, got 1"),
        ("max_args 1, two given", {"max_args": "1"}, ["a", "b"],
         "takes at most 1 argument, got 2"),
        ("max_args 2, three given", {"max_args": "2"}, ["a", "b", "c"],
         "takes at most 2 arguments, got 3"),
        ("an empty string is an argument too", {"max_args": "0"}, [""],
         "takes at most 0 arguments, got 1"),
        ("min_args = max_args, exactly that many", {"min_args": "2", "max_args": "2"},
         ["a", "b"], None),
        ("between min_args and max_args", {"min_args": "1", "max_args": "3"},
         ["a", "b"], None),
        ("arg_pattern, full match", {"arg_pattern": "[a-z]+"}, ["abc", "xyz"], None),
        ("arg_pattern, partial match at the start is refused", {"arg_pattern": "[a-z]+"},
         ["abc1"], "argument 1 ('abc1') does not match arg_pattern"),
        ("arg_pattern, match in the middle is refused", {"arg_pattern": "[a-z]+"},
         ["1abc"], "argument 1 ('1abc') does not match arg_pattern"),
        ("arg_pattern, a trailing newline is not ignored", {"arg_pattern": "[a-z]+"},
         ["abc\n"], "argument 1 ('abc\\n') does not match arg_pattern"),
        ("arg_pattern, `$` does not accept a trailing newline either",
         {"arg_pattern": "[a-z]+$"}, ["abc\n"],
         "argument 1 ('abc\\n') does not match arg_pattern"),
        ("arg_pattern, empty argument", {"arg_pattern": "[a-z]+"}, [""],
         "argument 1 ('') does not match arg_pattern"),
        ("arg_pattern, the second argument is named", {"arg_pattern": "[a-z]+"},
         ["ok", "BAD", "WORSE"], "argument 2 ('BAD') does not match arg_pattern"),
        ("arg_pattern alternation covers the whole argument",
         {"arg_pattern": "start|stop"}, ["startx"],
         "argument 1 ('startx') does not match arg_pattern"),
        ("arg_pattern alternation, second branch", {"arg_pattern": "start|stop"},
         ["xstop"], "argument 1 ('xstop') does not match arg_pattern"),
        ("arg_pattern alternation allows each branch", {"arg_pattern": "start|stop"},
         ["stop", "start"], None),
        ("arg_pattern with explicit anchors still works", {"arg_pattern": "^[0-9]+$"},
         ["42"], None),
        ("arg_pattern, non-ASCII", {"arg_pattern": "[a-z]+"}, ["\u00e9t\u00e9"],
         "argument 1 ('\u00e9t\u00e9') does not match arg_pattern"),
        ("arg_choices, a choice", {"arg_choices": "start stop status"}, ["status"], None),
        ("arg_choices, a prefix of a choice", {"arg_choices": "start stop status"},
         ["sta"], "argument 1 ('sta') is not one of: start stop status"),
        ("arg_choices are case-sensitive", {"arg_choices": "start stop status"},
         ["START"], "argument 1 ('START') is not one of: start stop status"),
        ("arg_choices, two choices in one argument", {"arg_choices": "start stop"},
         ["start stop"], "argument 1 ('start stop') is not one of: start stop"),
        ("arg_choices, the second argument is named", {"arg_choices": "a b"},
         ["a", "c"], "argument 2 ('c') is not one of: a b"),
        ("arg_choices, every argument may repeat a choice", {"arg_choices": "a b"},
         ["b", "b", "a"], None),
        ("count is checked before the arguments",
         {"max_args": "1", "arg_pattern": "[a-z]+"}, ["BAD", "x"],
         "takes at most 1 argument, got 2"),
        ("pattern and choices, the first offending argument wins",
         {"arg_pattern": "[a-z]", "arg_choices": "a b Z"}, ["c", "Z"],
         "argument 1 ('c') is not one of: a b Z"),
        ("pattern and choices, both must allow it",
         {"arg_pattern": "[a-z]", "arg_choices": "a b Z"}, ["a", "Z"],
         "argument 2 ('Z') does not match arg_pattern"),
        ("a long argument is cut in the message", {"arg_choices": "a"}, ["x" * 100],
         "argument 1 ('" + "x" * 60 + "...') is not one of: a"),
        ("settings that do not restrict arguments",
         {"timeout": "1", "max_running": "1", "shell": "yes", "cwd": "/tmp",
          "description": "d"}, ["anything", "at all"], None),
    ]

    def test_check_table(self):
        for case, settings, arguments, message in self.CASES:
            with self.subTest(case=case):
                checked = policy(**settings)
                if message is None:
                    self.assertIsNone(checked.check(arguments))
                    continue
                with self.assertRaises(RelayError) as caught:
                    checked.check(arguments)
                self.assertEqual(caught.exception.code, 2007)
                self.assertEqual(caught.exception.message, PREFIX + message)

    def test_unset_settings_are_none(self):
        fresh = Policy()
        for name in ("description", "timeout", "min_args", "max_args", "arg_pattern",
                     "arg_choices", "max_running", "shell", "cwd"):
            with self.subTest(setting=name):
                self.assertIsNone(getattr(fresh, name))


# ---------------------------------------------------------------------------------------
# End to end


class _ServerTestCase(unittest.TestCase):
    PROGRAM = "pyz"

    def start(self, *args, **kwargs):
        """Starts a server on a fresh config dir (`relays`, `auth`); returns it."""
        self.config_dir = relay_config(self, **kwargs)
        self.server = start_server(self, self.config_dir,
                                   args=("--shutdown-timeout", "3") + args,
                                   program=self.PROGRAM)
        return self.server

    def path(self, name):
        return os.path.join(self.config_dir, name)

    def call(self, command="true", arguments=None, auth_key=KEY):
        """Sends one request; returns the decoded one-line reply."""
        return support.request(self.server.port, auth_key=auth_key, command=command,
                               arguments=arguments)

    def assertRan(self, reply, code, stdout=None):
        self.assertEqual(set(reply), RAN_FIELDS, reply)
        self.assertEqual(reply["code"], code, reply)
        if stdout is not None:
            self.assertEqual(reply["stdout"], stdout, reply)

    def assertNotRan(self, reply, code, message=None):
        self.assertEqual(set(reply), NOT_RAN_FIELDS, reply)
        self.assertEqual(reply["code"], code, reply)
        self.assertEqual(reply["status"], "error", reply)
        if message is not None:
            self.assertEqual(reply["message"], message, reply)

    def assertRefused(self, reply, message):
        self.assertNotRan(reply, 2007, PREFIX + message)


class _Representative(object):
    """Run against both the .pyz and the source tree."""

    def test_timeout_shorter_than_global_kills_command_and_child_with_3003(self):
        self.start("--timeout", "30")
        self.addCleanup(kill_pid_in, self.path("short.pid"))
        started = time.monotonic()
        reply = self.call("short")
        self.assertLess(time.monotonic() - started, 10.0, "the global 30 s applied")
        self.assertRan(reply, 3003, stdout="started\n")
        self.assertEqual(reply["message"], "command timed out after 1 s and was killed")
        self.assertLess(reply["exit_code"], 0)
        with open(self.path("short.pid")) as handle:
            child = int(handle.read())
        self.assertTrue(wait_until(lambda: not alive(child)),
                        "the timed-out command's child still runs")

    def test_max_running_1_refuses_a_second_run_at_once_and_allows_one_afterwards(self):
        self.start()
        started, release = self.path("once.started"), self.path("once.release")
        # Whatever happens, the looping command must be able to end.
        self.addCleanup(touch, release)
        first = []
        thread = threading.Thread(target=lambda: first.append(self.call("once")))
        thread.start()
        self.addCleanup(thread.join, support.REPLY_TIMEOUT)
        self.assertTrue(wait_until(lambda: os.path.exists(started)), "first run never began")

        before = time.monotonic()
        second = self.call("once")
        self.assertLess(time.monotonic() - before, 5.0)
        self.assertNotRan(second, 3005)
        self.assertTrue(second["message"].startswith("command already running"), second)
        self.assertTrue(thread.is_alive(), "the second reply came only after the first run")
        # The limit is per command: others still run meanwhile.
        self.assertRan(self.call("true"), 0)

        touch(release)
        thread.join(support.REPLY_TIMEOUT)
        self.assertFalse(thread.is_alive())
        self.assertRan(first[0], 0, stdout="finished\n")
        # Nothing was queued: the refused request never ran.
        self.assertTrue(os.path.exists(started))
        os.remove(started)
        time.sleep(0.3)
        self.assertFalse(os.path.exists(started), "a refused run was queued and ran later")
        self.assertRan(self.call("once"), 0, stdout="finished\n")
        self.assertTrue(os.path.exists(started))

    def test_refused_arguments_get_2007_and_nothing_runs(self):
        self.start()
        bad = [("ran_min", []), ("ran_max", ["a"]), ("ran_pattern", ["A"]),
               ("ran_choices", ["c"])]
        for name, arguments in bad:
            with self.subTest(command=name):
                self.assertNotRan(self.call(name, arguments), 2007)
        # The marker of the one that would have run last has had time to appear.
        time.sleep(0.3)
        for name, _ in bad:
            with self.subTest(command=name):
                self.assertFalse(os.path.exists(self.path(name)), "%s ran" % name)
        good = [("ran_min", ["a"]), ("ran_max", []), ("ran_pattern", ["a"]),
                ("ran_choices", ["b"])]
        for name, arguments in good:
            with self.subTest(command=name):
                self.assertRan(self.call(name, arguments), 0)
                self.assertTrue(os.path.exists(self.path(name)), "%s did not run" % name)

    def test_shell_yes_uses_a_shell_without_shell_exec_and_keeps_arguments_literal(self):
        self.start()
        self.assertRan(self.call("shelled"), 0, stdout="HELLO\n")
        self.assertRan(self.call("pipe"), 0, stdout="hello | tr a-z A-Z\n")
        reply = self.call("say", ["; echo injected", "$(id)", "a  b", "`id`", "'q'"])
        self.assertRan(reply, 0, stdout="; echo injected $(id) a  b `id` 'q'\n")

    def test_list_shows_exactly_what_each_key_may_run_and_runs_nothing(self):
        self.start(relays=LIST_RELAYS)
        for key, expected in ((KEY, DEFAULT_LIST + OPS_LIST), (OTHER_KEY, OPS_LIST),
                              (ALL_KEY, DEFAULT_LIST + OPS_LIST + UNUSED_LIST),
                              (GHOST_KEY, [])):
            with self.subTest(key=key):
                reply = self.call("::list", auth_key=key)
                self.assertEqual(set(reply), LIST_FIELDS, reply)
                self.assertEqual((reply["status"], reply["code"]), ("success", 0))
                by_name = lambda entry: entry["command"]
                self.assertEqual(sorted(reply["commands"], key=by_name),
                                 sorted(expected, key=by_name))
        self.assertFalse(os.path.exists(self.path("greeted")), "::list ran a command")
        self.assertRan(self.call("greet"), 0, stdout="hi\n")
        self.assertTrue(os.path.exists(self.path("greeted")))

    def test_bad_setting_stops_the_server_with_exit_2_and_the_config_error(self):
        directory = relay_config(self, relays="[default]\nx = /bin/true\n"
                                              "x.arg_pattern = ([a-z]\n")
        status, out, err = run_uscmdrelay(
            self, ["--config-dir", directory, "--host", "127.0.0.1", "--port", "0"],
            self.PROGRAM)
        self.assertEqual(status, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith(
            "Config error: %s: [default] x.arg_pattern: '([a-z]' is not a valid regular "
            "expression" % os.path.join(directory, "relays.conf")), err)

    def test_reload_with_bad_setting_is_refused_and_a_good_one_applies(self):
        server = self.start(relays="[default]\necho = /bin/echo\n")
        self.assertRan(self.call("echo", ["a"]), 0, stdout="a\n")
        relays = self.path("relays.conf")

        with open(relays, "w") as handle:
            handle.write("[default]\necho = /bin/echo\necho.max_args = -1\n")
        server.process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "reload refused" in server.log_text()),
                        server.log_text())
        self.assertIn("Config error: %s: [default] echo.max_args: " % relays,
                      server.log_text())
        self.assertIsNone(server.process.poll(), "a bad reload stopped the server")
        self.assertRan(self.call("echo", ["a"]), 0, stdout="a\n")

        # A good reload does apply: the same request is now refused.
        with open(relays, "w") as handle:
            handle.write("[default]\necho = /bin/echo\necho.max_args = 0\n")
        server.process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "configuration reloaded" in server.log_text()),
                        server.log_text())
        self.assertRefused(self.call("echo", ["a"]), "takes at most 0 arguments, got 1")

    def test_configtest_list_shows_every_command_with_its_effective_settings(self):
        directory = relay_config(self, relays=LIST_RELAYS)
        status, out, err = run_uscmdrelay(
            self, ["--config-dir", directory, "configtest", "--list"], self.PROGRAM)
        self.assertEqual(status, 0, err)
        listed = settings_listing(out)
        self.assertEqual(sorted(listed), ["default::echo", "default::greet", "default::true",
                                          "ops::backup", "ops::restart", "unused::true"])
        self.assertEqual(listed["ops::backup"], ("/bin/echo backing up", {
            "description": "nightly backup", "timeout": "1.5", "min_args": "0",
            "max_args": "2", "arg_pattern": "[a-z0-9_-]+", "arg_choices": "home etc",
            "max_running": "1", "shell": "yes", "cwd": "/tmp", "max_output": "4096"}))
        self.assertEqual(listed["default::true"], ("/bin/true", {
            "description": "-", "timeout": "60 (--timeout)", "min_args": "-",
            "max_args": "-", "arg_pattern": "-", "arg_choices": "-", "max_running": "-",
            "shell": "no (--shell-exec)", "cwd": "-",
            "max_output": "1048576 (--max-output)"}))
        self.assertEqual(listed["ops::restart"][1]["description"], "restart one service")
        self.assertEqual(listed["ops::restart"][1]["arg_choices"], "web db")


class _PyzOnly(object):
    """The rest of the settings, against the .pyz."""

    def test_timeout_longer_than_global_lets_a_command_outlive_it(self):
        self.start("--timeout", "1")
        long, unlimited, plain = in_parallel(lambda: self.call("long"),
                                             lambda: self.call("unlimited"),
                                             lambda: self.call("plain"))
        self.assertRan(long, 0)
        self.assertGreaterEqual(long["duration_ms"], 1500)
        self.assertRan(unlimited, 0)  # timeout = 0: no limit at all
        self.assertGreaterEqual(unlimited["duration_ms"], 1500)
        # The same command without a timeout of its own gets the global one.
        self.assertRan(plain, 3003)
        self.assertEqual(plain["message"], "command timed out after 1 s and was killed")

    def test_min_args_and_max_args_name_the_counts(self):
        self.start()
        self.assertRefused(self.call("counted", []), "takes at least 1 argument, got 0")
        self.assertRefused(self.call("counted", ["a", "b", "c"]),
                           "takes at most 2 arguments, got 3")
        self.assertRan(self.call("counted", ["a"]), 0, stdout="a\n")
        self.assertRan(self.call("counted", ["a", "b"]), 0, stdout="a b\n")
        # Only the client's arguments count, not the configured command's own words.
        self.assertRan(self.call("ops::restart", ["web"]), 0, stdout="restarting web\n")
        self.assertRefused(self.call("ops::restart", ["web", "db"]),
                           "takes at most 1 argument, got 2")

    def test_arg_pattern_must_match_each_argument_completely(self):
        self.start()
        self.assertRan(self.call("word", ["abc", "xyz"]), 0, stdout="abc xyz\n")
        self.assertRefused(self.call("word", ["abc1"]),
                           "argument 1 ('abc1') does not match arg_pattern")
        self.assertRefused(self.call("word", ["1abc"]),
                           "argument 1 ('1abc') does not match arg_pattern")
        self.assertRefused(self.call("word", ["abc\n"]),
                           "argument 1 ('abc\\n') does not match arg_pattern")
        self.assertRefused(self.call("word", ["ok", "no way"]),
                           "argument 2 ('no way') does not match arg_pattern")
        self.assertRan(self.call("either", ["start"]), 0, stdout="start\n")
        self.assertRefused(self.call("either", ["startx"]),
                           "argument 1 ('startx') does not match arg_pattern")
        self.assertRefused(self.call("either", ["xstop"]),
                           "argument 1 ('xstop') does not match arg_pattern")

    def test_arg_choices_allow_only_the_listed_words(self):
        self.start()
        self.assertRan(self.call("service", ["status", "stop"]), 0, stdout="status stop\n")
        self.assertRefused(self.call("service", ["restart"]),
                           "argument 1 ('restart') is not one of: start stop status")
        self.assertRefused(self.call("service", ["start", "sta"]),
                           "argument 2 ('sta') is not one of: start stop status")
        self.assertRefused(self.call("ops::restart", ["cache"]),
                           "argument 1 ('cache') is not one of: web db")

    def test_policy_is_checked_after_key_grant_and_command(self):
        self.start()
        self.assertNotRan(self.call("counted", [], auth_key=WRONG_KEY), 1001)
        # OTHER_KEY may use only ops: 1002, not a hint about the policy.
        self.assertNotRan(self.call("counted", [], auth_key=OTHER_KEY), 1002)
        self.assertNotRan(self.call("nosuch::counted", [], auth_key=ALL_KEY), 2003)
        self.assertNotRan(self.call("ops::counted", []), 2004)
        self.assertNotRan(self.call("counted", []), 2007)

    def test_shell_no_runs_without_a_shell_on_a_shell_exec_server(self):
        self.start("--shell-exec")
        self.assertRan(self.call("pipe"), 0, stdout="HELLO\n")
        self.assertRan(self.call("unshelled"), 0, stdout="hello | tr a-z A-Z\n")
        self.assertRan(self.call("literal", ["$HOME", "; echo injected", "a  b"]), 0,
                       stdout="$HOME ; echo injected a  b\n")

    def test_cwd_is_the_commands_working_directory(self):
        self.start()
        work = os.path.realpath(self.path("work"))
        reply = self.call("where")
        self.assertRan(reply, 0)
        self.assertEqual(os.path.realpath(reply["stdout"].rstrip("\n")), work)
        reply = self.call("here")
        self.assertRan(reply, 0)
        self.assertNotEqual(os.path.realpath(reply["stdout"].rstrip("\n")), work)

    def test_missing_cwd_gets_3002_and_does_not_use_up_max_running(self):
        self.start()
        for attempt in (1, 2):
            with self.subTest(attempt=attempt):
                # max_running = 1: a leaked run count would make the second one 3005.
                self.assertNotRan(self.call("gone"), 3002)

    def test_list_gets_1001_for_an_unknown_key_and_2002_with_arguments(self):
        self.start(relays=LIST_RELAYS)
        self.assertNotRan(self.call("::list", auth_key=WRONG_KEY), 1001,
                          "authentication failed")
        reply = self.call("::list", ["default::true"])
        self.assertNotRan(reply, 2002)
        self.assertIn("::list", reply["message"])
        # Empty arguments are no arguments.
        self.assertEqual(self.call("::list", [])["code"], 0)
        self.assertFalse(os.path.exists(self.path("greeted")))
        self.assertIn('command="::list"', self.server.log_text())

    def test_configtest_list_shows_the_global_timeout_and_shell_exec_in_force(self):
        directory = relay_config(self, relays=LIST_RELAYS)
        for flags, timeout, shell in (
                ([], "60 (--timeout)", "no (--shell-exec)"),
                (["--timeout", "5"], "5 (--timeout)", "no (--shell-exec)"),
                (["--timeout", "0.5", "--shell-exec"], "0.5 (--timeout)",
                 "yes (--shell-exec)")):
            with self.subTest(flags=flags):
                status, out, err = run_uscmdrelay(
                    self, flags + ["--config-dir", directory, "configtest", "--list"])
                self.assertEqual(status, 0, err)
                listed = settings_listing(out)
                for name in ("default::true", "default::greet", "ops::restart"):
                    self.assertEqual(listed[name][1]["timeout"], timeout, name)
                    self.assertEqual(listed[name][1]["shell"], shell, name)
                # A command's own settings win over the flags.
                self.assertEqual(listed["ops::backup"][1]["timeout"], "1.5")
                self.assertEqual(listed["ops::backup"][1]["shell"], "yes")

    def test_configtest_without_list_prints_no_settings(self):
        directory = relay_config(self, relays=LIST_RELAYS)
        status, out, err = run_uscmdrelay(self, ["--config-dir", directory, "configtest"])
        self.assertEqual(status, 0, err)
        self.assertEqual(settings_listing(out), {})
        self.assertNotIn("nightly backup", out)


class PolicyTests(_Representative, _PyzOnly, _ServerTestCase):
    PROGRAM = "pyz"


class SourcePolicyTests(_Representative, _ServerTestCase):
    PROGRAM = "src"


# ---------------------------------------------------------------------------------------
# Bad settings where users meet them


class BadSettingTest(unittest.TestCase):

    # (relays.conf lines after `x = /bin/true`, where the error is reported)
    CASES = [
        ("x.timeout = soon", "x.timeout"),
        ("x.timeout = -1", "x.timeout"),
        ("x.timeout = nan", "x.timeout"),
        ("x.min_args = one", "x.min_args"),
        ("x.max_args = -1", "x.max_args"),
        ("x.min_args = 3\nx.max_args = 1", "x"),
        ("x.arg_pattern = ([a-z]", "x.arg_pattern"),
        ("x.arg_choices =", "x.arg_choices"),
        ("x.max_running = 0", "x.max_running"),
        ("x.shell = maybe", "x.shell"),
        ("x.cwd = relative/dir", "x.cwd"),
        ("x.max_output = -1", "x.max_output"),
        ("x.max_output = 1073741825", "x.max_output"),
        ("x.max_output = 1k", "x.max_output"),
        ("x.colour = red", "x.colour"),
        ("y.timeout = 1", "y.timeout"),
    ]

    def _directory(self, lines):
        return relay_config(self, relays="[default]\nx = /bin/true\n%s\n" % lines)

    def test_configtest_refuses_each_kind_with_exit_2_and_one_line(self):
        for lines, option in self.CASES:
            with self.subTest(setting=lines):
                directory = self._directory(lines)
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    status = cli.main(["--config-dir", directory, "configtest", "--list"])
                self.assertEqual(status, 2)
                self.assertEqual(out.getvalue(), "")
                self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
                self.assertTrue(err.getvalue().startswith(
                    "Config error: %s: [default] %s: "
                    % (os.path.join(directory, "relays.conf"), option)), err.getvalue())

    def test_server_refuses_to_start_on_each_kind(self):
        for lines, option in self.CASES:
            with self.subTest(setting=lines):
                directory = self._directory(lines)
                status, out, err = run_uscmdrelay(
                    self, ["--config-dir", directory, "--host", "127.0.0.1", "--port", "0"])
                self.assertEqual(status, 2, err)
                self.assertNotIn("listening", err)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertTrue(err.startswith("Config error: %s: [default] %s: "
                                               % (os.path.join(directory, "relays.conf"),
                                                  option)), err)

    def test_a_timeout_beyond_7_days_is_refused_with_the_range(self):
        # Issue 12: a 3000000 s timeout once reached epoll.poll(), whose OverflowError
        # ended the server and every command it ran.
        for value in ("3000000", "604800.5", "1e12", "inf", "Infinity"):
            with self.subTest(value=value):
                directory = self._directory("x.timeout = %s" % value)
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    status = cli.main(["--config-dir", directory, "configtest"])
                self.assertEqual(status, 2)
                self.assertEqual(err.getvalue(), "Config error: %s: [default] x.timeout: "
                                 "%r is out of range (0 to 604800 seconds; 0 for no "
                                 "limit)\n" % (os.path.join(directory, "relays.conf"),
                                                value))

    def test_max_output_takes_0_to_1_gib_and_names_the_range(self):
        self.assertEqual(policy(max_output="0").max_output, 0)
        self.assertEqual(policy(max_output="1073741824").max_output, 1073741824)
        directory = self._directory("x.max_output = 2000000000")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["--config-dir", directory, "configtest"])
        self.assertEqual(status, 2)
        self.assertEqual(err.getvalue(), "Config error: %s: [default] x.max_output: "
                         "'2000000000' is not a number of bytes from 0 to 1073741824 "
                         "(1 GiB)\n" % os.path.join(directory, "relays.conf"))

    def test_a_timeout_of_exactly_7_days_is_allowed(self):
        self.assertEqual(policy(timeout="604800").timeout, 604800.0)
        self.assertEqual(policy(timeout="0").timeout, 0.0)

    def test_settings_may_come_before_their_command(self):
        directory = relay_config(self, relays="[default]\nx.max_args = 0\n"
                                              "x.description = first\nx = /bin/true\n")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["--config-dir", directory, "configtest", "--list"])
        self.assertEqual(status, 0, err.getvalue())
        self.assertEqual(settings_listing(out.getvalue())["default::x"][1]["max_args"], "0")


if __name__ == "__main__":
    unittest.main()
