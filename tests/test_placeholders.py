"""Argument placeholders ($ARG1$ ... $ARG9$) in relays.conf: parsing, config errors,
argument counts (2007), guards, and hostile arguments through the real server in argv
and shell mode."""

import io
import shlex
import unittest

from tests import support
from uscmdrelay import config, executor, placeholders
from uscmdrelay.codes import RelayError
from uscmdrelay.options import Options

RELAYS = "/etc/uscmdrelay/relays.conf"
HOSTILE = ["; rm -rf / #", "a b  c", "two\nlines", "-f /etc/passwd", "$(id) `id` $HOME",
           "'\"\\", "--rsh=evil", ""]


def parse(text, shell_exec=False):
    clusters = config.parse_relays(config.read_ini(io.StringIO(text), RELAYS), RELAYS)
    config._check_shell_placeholders(clusters, Options(shell_exec=shell_exec))
    return clusters


def warnings_for(text, shell_exec=False):
    from uscmdrelay.guards import warn_about_unguarded_arguments
    warnings = []
    warn_about_unguarded_arguments(parse(text, shell_exec), Options(shell_exec=shell_exec),
                                   warnings)
    return warnings


class ParseTest(unittest.TestCase):

    def test_only_dollar_dollar_and_arg_text_are_special(self):
        self.assertEqual(placeholders.parse("a $$ $HOME ${x} $1 $ARGS $ARG $(id) $"),
                         ["a $ $HOME ${x} $1 $ARGS $ARG $(id) $"])

    def test_parts(self):
        self.assertEqual(placeholders.parse("x=$ARG2$$$ARG1$ $$HOME $ARGS"),
                         ["x=", 2, "$ARG1$ $HOME $ARGS"])

    def test_a_line_without_placeholders_is_untouched(self):
        for line in ("echo $$ $HOME", "sh -c 'kill -KILL $$'", "echo $ARGV"):
            with self.subTest(line=line):
                self.assertIsNone(placeholders.template_for(line, shlex.split(line)))
                command = parse("[default]\nc = %s\n" % line)["default"]["c"]
                self.assertEqual(executor.build_argv(command, ["x"]),
                                 shlex.split(line) + ["x"])

    def test_malformed_placeholders_are_config_errors(self):
        for line, problem in (
                ("echo $ARG0$", "malformed placeholder '$ARG0$'"),
                ("echo $ARG10$", "malformed placeholder '$ARG10$'"),
                ("echo $ARGx$", "malformed placeholder '$ARGx$'"),
                ("echo $ARG$", "malformed placeholder '$ARG$'"),
                ("echo $ARG1", "unclosed placeholder '$ARG1'"),
                ("echo $ARG1x and more", "unclosed placeholder '$ARG1x'")):
            with self.subTest(line=line):
                with self.assertRaises(config.ConfigError) as caught:
                    parse("[default]\nc = %s\n" % line)
                self.assertEqual(
                    str(caught.exception),
                    "%s: [default] c: %s (placeholders are $ARG1$ to $ARG9$; write $$ for "
                    "a literal $)" % (RELAYS, problem))

    def test_shell_placeholders_must_stand_outside_quotes(self):
        for line, problem in (
                ('echo "$ARG1$"', "$ARG1$ is inside double quotes, where the quoting of its "
                 "argument would not hold; write it outside quotes (the argument is quoted "
                 "for you)"),
                ("echo '-x $ARG2$' $ARG1$", "$ARG2$ is inside single quotes, where the "
                 "quoting of its argument would not hold; write it outside quotes (the "
                 "argument is quoted for you)"),
                ("echo \\$ARG1$", "$ARG1$ follows a backslash, which would unquote its "
                 "argument; remove the backslash"),
                ("echo # $ARG1$", "$ARG1$ is in a comment (after a '#' outside quotes); "
                 "move it before the '#'")):
            with self.subTest(line=line):
                text = "[default]\nc = %s\n" % line
                parse(text)  # fine without a shell: quotes only group words
                for shell_text, flag in ((text + "c.shell = yes\n", False), (text, True)):
                    with self.assertRaises(config.ConfigError) as caught:
                        parse(shell_text, shell_exec=flag)
                    self.assertEqual(str(caught.exception),
                                     "%s: [default] c: %s" % (RELAYS, problem))

    def test_max_args_beyond_the_placeholders_is_a_config_error(self):
        with self.assertRaises(config.ConfigError) as caught:
            parse("[default]\nc = echo $ARG1$ $ARG2$\nc.max_args = 3\n")
        self.assertEqual(str(caught.exception),
                         "%s: [default] c: max_args (3) is more than the highest "
                         "placeholder, $ARG2$: a command with placeholders takes no other "
                         "arguments" % RELAYS)
        with self.assertRaises(config.ConfigError) as caught:
            parse("[default]\nc = echo $ARG1$ $ARG2$\nc.min_args = 3\n")
        self.assertEqual(str(caught.exception),
                         "%s: [default] c: min_args (3) is greater than max_args (2, from "
                         "the highest placeholder $ARG2$)" % RELAYS)


class CountTest(unittest.TestCase):

    def check(self, text, arguments):
        command = parse(text)["default"]["c"]
        try:
            command.policy.check(arguments)
        except RelayError as error:
            return error.code, error.message
        return 0, executor.build_argv(command, arguments)

    def test_the_highest_placeholder_is_the_exact_count(self):
        text = "[default]\nc = echo $ARG2$ $ARG1$\n"
        self.assertEqual(self.check(text, ["a", "b"]), (0, ["echo", "b", "a"]))
        self.assertEqual(self.check(text, ["a"])[0], 2007)
        self.assertEqual(self.check(text, ["a", "b", "c"]), (
            2007, "arguments not allowed by this command's policy: takes at most 2 "
                  "arguments, got 3"))

    def test_min_args_lets_trailing_ones_be_empty(self):
        text = "[default]\nc = echo [$ARG1$] [$ARG2$]\nc.min_args = 0\n"
        self.assertEqual(self.check(text, []), (0, ["echo", "[]", "[]"]))
        self.assertEqual(self.check(text, ["x"]), (0, ["echo", "[x]", "[]"]))

    def test_configtest_list_and_list_show_the_implied_count(self):
        policy = parse("[default]\nc = echo $ARG3$\n")["default"]["c"].policy
        self.assertEqual(policy.argument_limits(), (3, 3))
        self.assertEqual(policy.effective("max_args", Options()), (3, "$ARG3$"))


class GuardTest(unittest.TestCase):

    def test_a_placeholder_alone_is_no_guard_against_options(self):
        self.assertEqual(warnings_for("[default]\nc = rsync -a $ARG1$ /backup/\n"), [
            "%s: [default] c: the client argument $ARG1$ starts a word with no '--' before "
            "it (an argument such as '-f FILE' becomes an option); set c.arg_pattern or "
            "c.arg_choices, or put '--' before it" % RELAYS])

    def test_guarded_placeholders_get_no_warning(self):
        for text in ("c = rsync -a -- $ARG1$ /backup/",
                     "c = rsync -a $ARG1$ /backup/\nc.arg_pattern = [a-z]+",
                     "c = check_disk --path=$ARG1$ -w x$ARG2$",
                     "c = df -h -- $ARG1$ | tail -1\nc.shell = yes"):
            with self.subTest(text=text):
                self.assertEqual(warnings_for("[default]\n%s\n" % text), [])

    def test_a_placeholder_in_command_position_or_a_script_is_warned_about(self):
        for text, risk in (
                ("c = $ARG1$ --version", "is the program to run"),
                ("c = uptime;$ARG1$\nc.shell = yes", "is the program to run"),
                ("c = sh -c 'echo $ARG1$'", "is part of the script a shell runs (an argument "
                 "such as '; reboot' becomes a command)")):
            with self.subTest(text=text):
                self.assertEqual(warnings_for("[default]\n%s\n" % text), [
                    "%s: [default] c: the client argument $ARG1$ %s; set c.arg_pattern or "
                    "c.arg_choices" % (RELAYS, risk)])


RELAYS_E2E = r"""
[default]
argv = printf '[%s]\n' x$ARG1$y -- $ARG2$ $$ARG1$ $HOME
shell = printf '[%s]\n' x$ARG1$y -- $ARG2$ '$$ARG1$' '$$HOME' | cat
shell.shell = yes
home = printf '[%s]\n' "$HOME" '$$ARG1$' $ARG1$
home.shell = yes
"""


class EndToEndTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        support.start_class_server(cls, relays=RELAYS_E2E,
                                   args=["--shutdown-timeout", "0"])

    @classmethod
    def tearDownClass(cls):
        support.stop_class_server(cls)

    def test_hostile_arguments_stay_one_literal_word_in_argv_and_shell_mode(self):
        for mode in ("argv", "shell"):
            for argument in HOSTILE:
                with self.subTest(mode=mode, argument=argument):
                    reply = support.request(self.server.port, command=mode,
                                            arguments=[argument, argument])
                    self.assertEqual(reply["code"], 0, reply)
                    self.assertEqual(reply["stdout"], "[x%sy]\n[--]\n[%s]\n[$ARG1$]\n[$HOME]\n"
                                     % (argument, argument))

    def test_dollar_home_still_expands_in_shell_mode(self):
        reply = support.request(self.server.port, command="home", arguments=["-n"])
        self.assertEqual(reply["code"], 0, reply)
        lines = reply["stdout"].splitlines()
        self.assertNotEqual(lines[0], "[$HOME]")
        self.assertEqual(lines[1:], ["[$ARG1$]", "[-n]"])

    def test_wrong_counts_are_2007_and_nothing_runs(self):
        for arguments in ([], ["one"], ["1", "2", "3"]):
            with self.subTest(arguments=arguments):
                reply = support.request(self.server.port, command="argv",
                                        arguments=arguments)
                self.assertEqual(reply["code"], 2007, reply)
                self.assertNotIn("exit_code", reply)

    def test_list_reports_the_count_the_placeholders_imply(self):
        reply = support.request(self.server.port, command="::list")
        entry = [item for item in reply["commands"] if item["command"] == "default::argv"]
        self.assertEqual((entry[0]["min_args"], entry[0]["max_args"]), (2, 2))


class ReadmeTest(unittest.TestCase):

    def test_the_readme_example_is_valid_guarded_and_runs_as_shown(self):
        from tests.test_readme import readme_blocks, run_pyz
        block = readme_blocks()["placeholder-relays"][0]
        directory = support.make_config_dir(self, relays=block)
        status, out, err = run_pyz(["--config-dir", directory, "configtest", "--list"])
        self.assertEqual(status, 0, err)
        self.assertEqual([line for line in out.splitlines() if "$ARG" in line
                          and line.startswith("warning")], [])
        self.assertIn("    min_args     3 ($ARG3$)\n", out)
        server = support.start_server(self, config_dir=directory)
        reply = support.request(server.port, command="hello", arguments=["my files; id"])
        self.assertEqual(reply["stdout"], "hello-my files; id\n")
        with self.assertRaises(config.ConfigError) as caught:
            parse(block.replace("grep -- $ARG1$", 'grep -- "$ARG1$"'))
        self.assertEqual(str(caught.exception), "%s: [default] top: $ARG1$ is inside double "
                         "quotes, where the quoting of its argument would not hold; write it "
                         "outside quotes (the argument is quoted for you)" % RELAYS)


if __name__ == "__main__":
    unittest.main()
