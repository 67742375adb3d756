"""Unit tests for uscmdrelay.config: INI rules, relays.conf, auth.conf, loading and finding.

Config errors are what users read, so these tests assert their exact text.
"""

import io
import os
import shutil
import tempfile
import unittest

from tests import support
from uscmdrelay import config, keys
from uscmdrelay.config import ConfigError

RELAYS = "/etc/uscmdrelay/relays.conf"
AUTH = "/etc/uscmdrelay/auth.conf"
KEY = "s3cret-key-0123456789abcdefXYZ"
HIDDEN = "key " + config.key_fingerprint(KEY)


def guards(*names):
    """`NAME.max_args = 0` lines: these commands get no unguarded-arguments warning."""
    return "".join("%s.max_args = 0\n" % name for name in names)


def relays(text):
    """Parses relays.conf text; returns {cluster: {name: argv}}."""
    clusters = config.parse_relays(config.read_ini(io.StringIO(text), RELAYS), RELAYS)
    return dict((cluster, dict((name, command.argv) for name, command in commands.items()))
                for cluster, commands in clusters.items())


class _GrantsByKey(dict):
    """parse_auth's {digest: KeyGrant}, looked up by the key itself."""

    def __getitem__(self, key):
        return dict.__getitem__(self, config.key_digest(key))


def auth(text, warnings=None):
    """Parses auth.conf text as load_config does; returns {key: KeyGrant}."""
    parser = config.read_ini(io.StringIO(text), AUTH, secret=True)
    return _GrantsByKey(config.parse_auth(parser, AUTH, [] if warnings is None else warnings))


class RelaysConfTest(unittest.TestCase):

    ERRORS = [
        ("duplicate section", "[a]\nx = y\n[b]\nz = w\n[a]\nv = w\n",
         RELAYS + ": line 5: section [a] is defined twice"),
        ("duplicate option", "[a]\nx = y\nz = w\nx = z\n",
         RELAYS + ": [a] x: line 4: option is defined twice"),
        ("option outside a section", "x = y\n[a]\nz = w\n",
         RELAYS + ": line 1: 'x = y' is outside any [section]"),
        ("option after a comment, outside a section", "# c\n\nx = y\n",
         RELAYS + ": line 3: 'x = y' is outside any [section]"),
        ("line without '='", "[a]\nx = y\n  \nfoo bar\n",
         RELAYS + ": line 4: 'foo bar' is not 'name = value'"),
        ("option without a value", "[a]\nuptime\n",
         RELAYS + ": line 2: 'uptime' is not 'name = value'"),
        ("':' is not a separator", "[a]\nuptime: uptime\n",
         RELAYS + ": line 2: 'uptime: uptime' is not 'name = value'"),
        ("[DEFAULT] section", "[DEFAULT]\nx = y\n[a]\nz = w\n",
         RELAYS + ": [DEFAULT]: a [DEFAULT] section is not supported (the default cluster "
         "is spelled [default])"),
        ("unbalanced double quote", '[backup]\nrun = sh -c "echo hi\n',
         RELAYS + ": [backup] run: No closing quotation"),
        ("unbalanced single quote", "[backup]\nrun = echo 'hi\n",
         RELAYS + ": [backup] run: No closing quotation"),
        ("trailing backslash", "[backup]\nrun = echo \\\n",
         RELAYS + ": [backup] run: No escaped character"),
        ("empty command", "[a]\nx =\n", RELAYS + ": [a] x: empty command"),
        ("blank command", "[a]\nx =    \t\n", RELAYS + ": [a] x: empty command"),
        ("empty program name", "[a]\nx = '' arg\n",
         RELAYS + ": [a] x: the program name (the first word) is empty"),
        ("'::' in a cluster name", "[a::b]\nx = y\n",
         RELAYS + ": [a::b]: '::' is not allowed in a cluster name (it separates cluster "
         "and command)"),
        ("'::' in a command name", "[a]\nx::y = z\n",
         RELAYS + ": [a] x::y: '::' is not allowed in a command name (it separates "
         "cluster and command)"),
        ("'.' in a command name", "[a]\nx.y = true\n",
         RELAYS + ": [a] x.y: setting for command 'x', which this section does not define "
         "(command names may not contain '.')"),
        ("setting for an undefined command", "[a]\nx = true\ny.timeout = 5\n",
         RELAYS + ": [a] y.timeout: setting for command 'y', which this section does not "
         "define (command names may not contain '.')"),
        ("setting for a command of another section", "[a]\nx = true\n[b]\nx.timeout = 5\n",
         RELAYS + ": [b] x.timeout: setting for command 'x', which this section does not "
         "define (command names may not contain '.')"),
        ("unknown setting", "[a]\nx = true\nx.timeuot = 5\n",
         RELAYS + ": [a] x.timeuot: unknown setting 'timeuot' (expected one of: description, "
         "timeout, min_args, max_args, arg_pattern, arg_choices, max_running, shell, cwd)"),
        ("bad timeout", "[a]\nx = true\nx.timeout = soon\n",
         RELAYS + ": [a] x.timeout: 'soon' is not a number of seconds (0 for no limit)"),
        ("negative timeout", "[a]\nx = true\nx.timeout = -1\n",
         RELAYS + ": [a] x.timeout: '-1' is not a number of seconds (0 for no limit)"),
        ("bad min_args", "[a]\nx = true\nx.min_args = one\n",
         RELAYS + ": [a] x.min_args: 'one' is not a whole number"),
        ("negative max_args", "[a]\nx = true\nx.max_args = -1\n",
         RELAYS + ": [a] x.max_args: '-1' is less than 0"),
        ("min_args > max_args", "[a]\nx = true\nx.min_args = 2\nx.max_args = 1\n",
         RELAYS + ": [a] x: min_args (2) is greater than max_args (1)"),
        ("invalid arg_pattern", "[a]\nx = true\nx.arg_pattern = [a-\n",
         RELAYS + ": [a] x.arg_pattern: '[a-' is not a valid regular expression: "
         "unterminated character set at position 0"),
        ("empty arg_choices", "[a]\nx = true\nx.arg_choices =\n",
         RELAYS + ": [a] x.arg_choices: no words given; list the allowed arguments "
         "separated by spaces"),
        ("max_running 0", "[a]\nx = true\nx.max_running = 0\n",
         RELAYS + ": [a] x.max_running: '0' is less than 1"),
        ("bad shell", "[a]\nx = true\nx.shell = maybe\n",
         RELAYS + ": [a] x.shell: 'maybe' is not yes or no"),
        ("relative cwd", "[a]\nx = true\nx.cwd = tmp\n",
         RELAYS + ": [a] x.cwd: 'tmp' is not an absolute path"),
        ("cluster name with surrounding spaces", "[ a ]\nx = y\n",
         RELAYS + ": [ a ]: a cluster name may not be empty or start or end with white "
         "space"),
        ("no clusters", "# only a comment\n\n",
         RELAYS + ": no clusters defined; add a section such as [default] with a line "
         "'name = command'"),
        ("empty file", "",
         RELAYS + ": no clusters defined; add a section such as [default] with a line "
         "'name = command'"),
    ]

    def test_errors_have_exact_messages(self):
        for name, text, message in self.ERRORS:
            with self.subTest(case=name):
                with self.assertRaises(ConfigError) as caught:
                    relays(text)
                self.assertEqual(str(caught.exception), message)

    def test_first_error_in_file_order_is_reported(self):
        with self.assertRaises(ConfigError) as caught:
            relays("[a]\nx = echo 'a\n[b]\ny =\n")
        self.assertEqual(str(caught.exception), RELAYS + ": [a] x: No closing quotation")

    def test_interpolation_is_off(self):
        self.assertEqual(relays("[default]\ndate = date +%Y-%m-%d\npct = echo 100%% %(x)s\n"),
                         {"default": {"date": ["date", "+%Y-%m-%d"],
                                      "pct": ["echo", "100%%", "%(x)s"]}})

    def test_equals_is_the_only_separator(self):
        self.assertEqual(relays("[default]\ncheck:disk = df -h /\nkv = echo a=b c:d\n"),
                         {"default": {"check:disk": ["df", "-h", "/"],
                                      "kv": ["echo", "a=b", "c:d"]}})

    def test_option_names_are_case_sensitive(self):
        self.assertEqual(relays("[default]\nEcho = echo A\necho = echo a\n[Default]\n"
                                "ECHO = echo B\n"),
                         {"default": {"Echo": ["echo", "A"], "echo": ["echo", "a"]},
                          "Default": {"ECHO": ["echo", "B"]}})

    def test_hash_and_semicolon_comments(self):
        text = ("# comment\n; comment\n[default]\n# x = not a command\n; y = nor this\n"
                "echo = echo hi # and this is an argument\nz = echo a;b\n")
        self.assertEqual(relays(text), {"default": {
            "echo": ["echo", "hi", "#", "and", "this", "is", "an", "argument"],
            "z": ["echo", "a;b"]}})

    def test_command_line_is_split_like_a_shell_would(self):
        text = ("[default]\n"
                "q = sh -c \"echo one; echo 'two'\"\n"
                "e = printf '%s\\n' \"a b\"\n"
                "empty-arg = echo '' x\n")
        self.assertEqual(relays(text), {"default": {
            "q": ["sh", "-c", "echo one; echo 'two'"],
            "e": ["printf", "%s\\n", "a b"],
            "empty-arg": ["echo", "", "x"]}})

    def test_empty_cluster_is_allowed_and_kept(self):
        self.assertEqual(relays("[default]\n[ops]\nup = uptime\n"),
                         {"default": {}, "ops": {"up": ["uptime"]}})

    def test_commands_keep_their_line_and_place(self):
        clusters = config.parse_relays(config.read_ini(
            io.StringIO("[ops]\nup = uptime  -p\n"), RELAYS), RELAYS)
        command = clusters["ops"]["up"]
        self.assertEqual((command.cluster, command.name, command.line, command.argv),
                         ("ops", "up", "uptime  -p", ["uptime", "-p"]))


class AuthConfTest(unittest.TestCase):

    ERRORS = [
        ("unknown option", "[%s]\nauth_clusters = a\nclusters = b\n" % KEY,
         AUTH + ": [%s] clusters: unknown option (expected one of: auth_clusters, description, "
         "allowed_hosts)"
         % HIDDEN),
        ("option names are case-sensitive", "[%s]\nAuth_Clusters = a\n" % KEY,
         AUTH + ": [%s] Auth_Clusters: unknown option (expected one of: auth_clusters, "
         "description, allowed_hosts)" % HIDDEN),
        ("missing auth_clusters", "[%s]\ndescription = ci\n" % KEY,
         AUTH + ": [%s] auth_clusters: missing; list the clusters this key may use, or "
         "'*' for all" % HIDDEN),
        ("empty auth_clusters", "[%s]\nauth_clusters =\n" % KEY,
         AUTH + ": [%s] auth_clusters: empty; list the clusters this key may use, or "
         "'*' for all" % HIDDEN),
        ("auth_clusters of separators only", "[%s]\nauth_clusters = , ,\n" % KEY,
         AUTH + ": [%s] auth_clusters: empty; list the clusters this key may use, or "
         "'*' for all" % HIDDEN),
        ("'*' mixed with names", "[%s]\nauth_clusters = default, *\n" % KEY,
         AUTH + ": [%s] auth_clusters: '*' means all clusters and cannot be combined with "
         "names" % HIDDEN),
        ("'*' twice", "[%s]\nauth_clusters = * *\n" % KEY,
         AUTH + ": [%s] auth_clusters: '*' means all clusters and cannot be combined with "
         "names" % HIDDEN),
        ("key with surrounding spaces", "[ %s ]\nauth_clusters = a\n" % KEY,
         AUTH + ": [key %s]: an auth key may not start or end with white space"
         % config.key_fingerprint(" %s " % KEY)),
        ("duplicate key", "[%s]\nauth_clusters = a\n\n[%s]\nauth_clusters = b\n"
         % (KEY, KEY), AUTH + ": line 4: section [%s] is defined twice" % HIDDEN),
        ("duplicate option", "[%s]\nauth_clusters = a\nauth_clusters = b\n" % KEY,
         AUTH + ": [%s] auth_clusters: line 3: option is defined twice" % HIDDEN),
        ("key typed without brackets", "%s\nauth_clusters = a\n" % KEY,
         AUTH + ": line 1: this line is outside any [section]"),
        ("key typed without a closing bracket",
         "[other-0123456789abcdef]\nauth_clusters = a\n[%s\n" % KEY,
         AUTH + ": line 3: this line is not 'name = value'"),
        ("[DEFAULT] section", "[DEFAULT]\nauth_clusters = *\n",
         AUTH + ": [DEFAULT]: a [DEFAULT] section is not supported (the default cluster "
         "is spelled [default])"),
    ]

    def test_errors_have_exact_messages_and_never_show_the_key(self):
        for name, text, message in self.ERRORS:
            with self.subTest(case=name):
                with self.assertRaises(ConfigError) as caught:
                    auth(text)
                self.assertEqual(str(caught.exception), message)
                self.assertNotIn(KEY, str(caught.exception))
                self.assertNotIn(KEY, repr(caught.exception))

    def test_cluster_lists(self):
        cases = [("default", frozenset(["default"])),
                 ("default ops", frozenset(["default", "ops"])),
                 ("default,ops", frozenset(["default", "ops"])),
                 (" default ,\tops ,, backup ", frozenset(["default", "ops", "backup"])),
                 ("*", "*"), (" * ", "*"), ("*,", "*")]
        for value, expected in cases:
            with self.subTest(value=value):
                self.assertEqual(keys.parse_cluster_list(value, AUTH, HIDDEN), expected)

    def test_grants_are_keyed_by_the_case_sensitive_key(self):
        other = KEY.upper()
        keys = auth("[%s]\ndescription = ci runner\nauth_clusters = default, ops\n\n"
                    "[%s]\nauth_clusters = *\n" % (KEY, other))
        self.assertEqual(sorted(keys), sorted([config.key_digest(KEY), config.key_digest(other)]))
        self.assertEqual(keys[KEY].label, "ci runner")
        self.assertEqual(keys[KEY].clusters, frozenset(["default", "ops"]))
        self.assertTrue(keys[KEY].allows("ops"))
        self.assertFalse(keys[KEY].allows("backup"))
        self.assertEqual(keys[other].clusters, "*")
        self.assertTrue(keys[other].allows("anything"))

    def test_label_is_the_description_or_a_fingerprint(self):
        keys = auth("[%s]\nauth_clusters = a\ndescription =   \n" % KEY)
        label = keys[KEY].label
        self.assertEqual(label, config.key_fingerprint(KEY))
        self.assertRegex(label, r"^sha256:[0-9a-f]{12}$")
        self.assertNotIn(KEY, label)

    def test_short_key_and_no_keys_are_warnings_without_the_key(self):
        warnings = []
        auth("[short]\nauth_clusters = a\n", warnings)
        self.assertEqual(warnings, [
            AUTH + ": [key %s] the key is shorter than 16 characters; use a long random "
            "key" % config.key_fingerprint("short")])
        warnings = []
        self.assertEqual(auth("# nobody yet\n", warnings), {})
        self.assertEqual(warnings, [AUTH + ": no keys defined; every request will be "
                                    "refused"])

    def test_comments_and_interpolation_off_in_auth_conf(self):
        keys = auth("# a comment\n; another\n[%s]\n# auth_clusters = *\n"
                    "description = 100%% ops; %%(x)s\nauth_clusters = ops\n" % KEY)
        self.assertEqual(keys[KEY].label, "100% ops; %(x)s")
        self.assertEqual(keys[KEY].clusters, frozenset(["ops"]))


class LoadConfigTest(unittest.TestCase):

    AUTH_TEXT = ("[%s]\ndescription = ci\nauth_clusters = default, nosuch\n\n"
                 "[other-key-0123456789abcdef]\nauth_clusters = *\n" % KEY)
    RELAYS_TEXT = ("[default]\ntrue = /bin/true\necho = echo hello\n"
                   "date = date +%Y-%m-%d\n\n[ops]\nup = uptime\n")

    def make_dir(self, auth=None, relays=None):
        return support.make_config_dir(
            self, auth=self.AUTH_TEXT if auth is None else auth,
            relays=self.RELAYS_TEXT if relays is None else relays)

    def test_valid_directory_loads(self):
        directory = self.make_dir()
        loaded = config.load_config(directory)
        self.assertEqual(loaded.directory, directory)
        self.assertEqual(sorted(loaded.clusters), ["default", "ops"])
        self.assertEqual(loaded.command_count, 4)
        self.assertEqual(loaded.clusters["default"]["date"].argv, ["date", "+%Y-%m-%d"])
        self.assertEqual(len(loaded.keys), 2)
        # The table is indexed by digests, never by the secret itself.
        self.assertNotIn(KEY, loaded.keys)
        self.assertEqual(loaded.keys[config.key_digest(KEY)].label, "ci")

    def test_auth_conf_readable_by_others_is_refused(self):
        for mode in (0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601, 0o620, 0o602):
            with self.subTest(mode=oct(mode)):
                directory = self.make_dir()
                path = os.path.join(directory, "auth.conf")
                os.chmod(path, mode)
                with self.assertRaises(ConfigError) as caught:
                    config.load_config(directory)
                self.assertEqual(str(caught.exception), "%s: mode %04o lets group or "
                                 "others access the keys; run chmod 600 %s"
                                 % (path, mode, path))
                self.assertNotIn(KEY, str(caught.exception))

    def test_auth_conf_private_modes_are_accepted(self):
        for mode in (0o600, 0o400, 0o700, 0o200, 0o000):
            with self.subTest(mode=oct(mode)):
                directory = self.make_dir()
                os.chmod(os.path.join(directory, "auth.conf"), mode)
                if mode & 0o400 == 0 and os.geteuid() != 0:
                    continue  # the owner cannot read it; only root can
                config.load_config(directory)

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "needs root to give the file to another user")
    def test_auth_conf_owned_by_another_user_is_refused(self):
        directory = self.make_dir()
        path = os.path.join(directory, "auth.conf")
        os.chown(path, 54321, -1)
        with self.assertRaises(ConfigError) as caught:
            config.load_config(directory)
        self.assertEqual(str(caught.exception),
                         "%s: owned by uid 54321, but uscmdrelay runs as uid 0; chown it to "
                         "that user and chmod 600 it" % path)

    def test_missing_files(self):
        directory = self.make_dir()
        os.unlink(os.path.join(directory, "auth.conf"))
        with self.assertRaises(ConfigError) as caught:
            config.load_config(directory)
        self.assertEqual(str(caught.exception),
                         os.path.join(directory, "auth.conf") + ": file not found")
        os.unlink(os.path.join(directory, "relays.conf"))
        with self.assertRaises(ConfigError) as caught:
            config.load_config(directory)
        self.assertEqual(str(caught.exception),
                         os.path.join(directory, "relays.conf") + ": file not found")

    def test_file_errors_name_the_real_path(self):
        directory = self.make_dir(relays="[default]\nx = echo 'unclosed\n")
        with self.assertRaises(ConfigError) as caught:
            config.load_config(directory)
        self.assertEqual(str(caught.exception), "%s: [default] x: No closing quotation"
                         % os.path.join(directory, "relays.conf"))

    def test_auth_conf_errors_never_show_the_key(self):
        texts = ["[%s]\nauth_clusters = a\n[%s]\nauth_clusters = b\n" % (KEY, KEY),
                 "[%s]\nauth_clusters = a\nauth_clusters = b\n" % KEY,
                 "[%s]\nauth_clusters = a\nfoo = 1\n" % KEY,
                 "[%s]\ndescription = x\n" % KEY,
                 "%s\n" % KEY,
                 "[a-long-enough-other-key]\nauth_clusters = a\n%s\n" % KEY]
        for text in texts:
            with self.subTest(text=text):
                directory = self.make_dir(auth=text)
                with self.assertRaises(ConfigError) as caught:
                    config.load_config(directory)
                self.assertIn(os.path.join(directory, "auth.conf"), str(caught.exception))
                self.assertNotIn(KEY, str(caught.exception))

    def test_auth_conf_not_utf8_is_an_error(self):
        directory = self.make_dir()
        path = os.path.join(directory, "auth.conf")
        with open(path, "wb") as handle:
            handle.write(b"[\xff\xfe]\nauth_clusters = *\n")
        with self.assertRaises(ConfigError) as caught:
            config.load_config(directory)
        self.assertTrue(str(caught.exception).startswith(
            path + ": cannot read: 'utf-8' codec can't decode byte 0xff"),
            str(caught.exception))

    def test_warnings_for_undefined_cluster_and_missing_executables(self):
        relays_text = ("[default]\ntrue = /bin/true\nsh = sh -c 'exit 0'\n"
                       "gone = no-such-program-uscmdrelay-test --flag\n"
                       "abs = /nonexistent/uscmdrelay-program\n"
                       "notexec = /etc/passwd\n" + guards("true", "sh", "gone", "abs",
                                                              "notexec"))
        directory = self.make_dir(relays=relays_text)
        relays_path = os.path.join(directory, "relays.conf")
        auth_path = os.path.join(directory, "auth.conf")
        loaded = config.load_config(directory)
        self.assertEqual(loaded.warnings, [
            "%s: [%s] auth_clusters: cluster 'nosuch' is not defined in any relays file"
            % (auth_path, HIDDEN),
            "%s: [default] abs: '/nonexistent/uscmdrelay-program' is not an executable file"
            % relays_path,
            "%s: [default] gone: 'no-such-program-uscmdrelay-test' is not an executable file "
            "on PATH" % relays_path,
            "%s: [default] notexec: '/etc/passwd' is not an executable file" % relays_path,
        ])
        for warning in loaded.warnings:
            self.assertNotIn(KEY, warning)

    def test_no_executable_warnings_with_shell_exec(self):
        relays_text = ("[default]\ngone = no-such-program-uscmdrelay-test | wc -l\n"
                       "gone.max_args = 0\n")
        directory = self.make_dir(relays=relays_text)
        loaded = config.load_config(directory, shell_exec=True)
        self.assertEqual(loaded.warnings, [
            "%s: [%s] auth_clusters: cluster 'nosuch' is not defined in any relays file"
            % (os.path.join(directory, "auth.conf"), HIDDEN)])

    def test_clean_config_has_no_warnings(self):
        directory = self.make_dir(auth="[%s]\nauth_clusters = default ops\n" % KEY,
                                  relays=self.RELAYS_TEXT.replace(
                                      "\n\n", "\n" + guards("true", "echo", "date") + "\n")
                                  + "up.max_args = 0\n")
        self.assertEqual(config.load_config(directory).warnings, [])

    def test_samples_load_once_copied_with_a_private_auth_conf(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        samples = os.path.join(support.ROOT, "samples")
        shutil.copy(os.path.join(samples, "auth.sample.conf"),
                    os.path.join(directory, "auth.conf"))
        shutil.copy(os.path.join(samples, "relays.sample.conf"),
                    os.path.join(directory, "relays.conf"))
        os.chmod(os.path.join(directory, "auth.conf"), 0o600)
        loaded = config.load_config(directory, shell_exec=True)
        self.assertIn("default", loaded.clusters)
        self.assertGreater(len(loaded.keys), 0)
        self.assertEqual(loaded.warnings, [])


def unguarded(name):
    """The warning for command NAME of [default] in RELAYS."""
    return ("%s: [default] %s: client arguments are appended unguarded (an argument such "
            "as '-f FILE' becomes an option); set %s.max_args = 0, or end the command line "
            "with '--' and set %s.arg_pattern or %s.arg_choices" % (RELAYS, name, name, name,
                                                                    name))


def ends_in(name, operator, effect):
    return ("%s: [default] %s: the shell command line ends in '%s', so the first client "
            "argument %s; set %s.max_args = 0, or complete the command line"
            % (RELAYS, name, operator, effect, name))


def comment(name):
    return ("%s: [default] %s: the shell command line holds a comment (a '#' outside quotes "
            "starts one), which swallows the client arguments; set %s.max_args = 0, or "
            "quote the '#'" % (RELAYS, name, name))


AS_COMMAND = "runs as a command"
AS_FILE = "is the file name of a redirection"


class ArgumentGuardWarningTest(unittest.TestCase):
    """Commands whose client arguments could become options, commands or file names."""

    # (relays.conf lines of [default] for a command `c`, --shell-exec, expected warning)
    CASES = [
        ("c = date +%Y-%m-%d", False, unguarded("c")),
        ("c = date +%Y-%m-%d\nc.max_args = 0", False, None),
        ("c = date +%Y-%m-%d\nc.max_args = 1", False, unguarded("c")),
        ("c = date +%Y-%m-%d\nc.min_args = 1", False, unguarded("c")),
        ("c = echo\nc.arg_pattern = [^-].*", False, None),
        ("c = systemctl restart\nc.arg_choices = nginx php-fpm", False, None),
        ("c = df -h --", False, None),
        ("c = grep -e error -- /var/log/syslog", False, None),  # still after the '--'
        ("c = df '--'", False, None),
        ("c = --", False, unguarded("c")),  # the program itself
        ("c = echo --x", False, unguarded("c")),
        # Without a shell, shell syntax is literal: no operator, no comment.
        ("c = echo hi # note", False, unguarded("c")),
        ("c = echo hi &&", False, unguarded("c")),
        ("c = echo hi # note", True, comment("c")),
        ("c = echo hi #", True, comment("c")),
        ("c = echo hi\nc.shell = yes", False, unguarded("c")),
        ("c = echo hi --\nc.shell = yes", False, None),
        ("c = echo hi --\nc.shell = no", True, None),
        ("c = echo hi # note\nc.shell = no", True, unguarded("c")),
        ("c = echo hi # note\nc.max_args = 0", True, None),
        ("c = echo hi # note\nc.arg_pattern = [a-z]+", True, comment("c")),
        ("c = echo '# not a comment' --", True, None),
        ('c = echo "# not a comment" --', True, None),
        ("c = echo \\# --", True, None),
        ("c = echo a#b --", True, None),
        ("c = echo ${#HOME} --", True, None),
        ("c = echo $(date +%s) --", True, None),
        ("c = cd /srv &&", True, ends_in("c", "&&", AS_COMMAND)),
        ("c = false ||", True, ends_in("c", "||", AS_COMMAND)),
        ("c = ps ax |", True, ends_in("c", "|", AS_COMMAND)),
        ("c = ps ax | grep --\nc.arg_pattern = [a-z]+", True, None),
        ("c = true;", True, ends_in("c", ";", AS_COMMAND)),
        ("c = sleep 9 &", True, ends_in("c", "&", AS_COMMAND)),
        ("c = sleep 9 &\nc.arg_choices = x", True, ends_in("c", "&", AS_COMMAND)),
        ("c = sleep 9 &\nc.max_args = 0", True, None),
        ("c = date >", True, ends_in("c", ">", AS_FILE)),
        ("c = date >>", True, ends_in("c", ">>", AS_FILE)),
        ("c = wc -l <", True, ends_in("c", "<", AS_FILE)),
        ("c = date 2>&1", True, unguarded("c")),
        ("c = ls -- | sort", True, unguarded("c")),
        ("c = ls | sort --", True, None),
        ("c = ls -- > /tmp/out", True, None),
    ]

    def warnings(self, lines, shell_exec):
        clusters = config.parse_relays(config.read_ini(
            io.StringIO("[default]\n%s\n" % lines), RELAYS), RELAYS)
        warnings = []
        config._warn_about_arguments(clusters, shell_exec, warnings)
        return warnings

    def test_each_unguarded_command_is_named_with_the_fix(self):
        for lines, shell_exec, expected in self.CASES:
            with self.subTest(lines=lines, shell_exec=shell_exec):
                self.assertEqual(self.warnings(lines, shell_exec),
                                 [] if expected is None else [expected])

    def test_load_config_warns_per_file_cluster_and_command_in_order(self):
        directory = support.make_config_dir(
            self, auth="[%s]\nauth_clusters = *\n" % KEY,
            relays="[web]\ntail = tail -n 5\nok = true\nok.max_args = 0\n"
                   "[default]\nlist = ls\ndate = date\n")
        path = os.path.join(directory, "relays.conf")
        warnings = config.load_config(directory).warnings
        self.assertEqual(warnings, [
            unguarded("date").replace(RELAYS, path),
            unguarded("list").replace(RELAYS, path),
            unguarded("tail").replace(RELAYS, path).replace("[default]", "[web]"),
        ])

    def test_init_template_and_samples_are_guarded(self):
        from uscmdrelay import init_config
        for shell_exec in (False, True):
            with self.subTest(shell_exec=shell_exec):
                clusters = config.parse_relays(config.read_ini(
                    io.StringIO(init_config.RELAYS_TEMPLATE), RELAYS), RELAYS)
                warnings = []
                config._warn_about_arguments(clusters, shell_exec, warnings)
                self.assertEqual(warnings, [])
                with open(os.path.join(support.ROOT, "samples", "relays.sample.conf"),
                          encoding="utf-8") as handle:
                    clusters = config.parse_relays(config.read_ini(handle, RELAYS), RELAYS)
                config._warn_about_arguments(clusters, shell_exec, warnings)
                self.assertEqual(warnings, [])


class FindConfigDirTest(unittest.TestCase):

    def make_dirs(self, count):
        root = tempfile.mkdtemp(prefix="uscmdrelay-test-")
        self.addCleanup(shutil.rmtree, root, True)
        paths = []
        for index in range(count):
            path = os.path.join(root, "place%d" % index)
            os.mkdir(path)
            paths.append(path)
        return root, paths

    def touch(self, *parts):
        with open(os.path.join(*parts), "w") as handle:
            handle.write("")

    def test_first_directory_holding_either_file_wins(self):
        root, (empty, relays_only, auth_only, both) = self.make_dirs(4)
        self.touch(relays_only, "relays.conf")
        self.touch(auth_only, "auth.conf")
        self.touch(both, "auth.conf")
        self.touch(both, "relays.conf")
        missing = os.path.join(root, "missing")
        cases = [((missing, empty, relays_only, both), relays_only),
                 ((empty, auth_only, relays_only), auth_only),
                 ((both, relays_only), both),
                 ((missing, empty, both), both)]
        for search_path, expected in cases:
            with self.subTest(search_path=search_path):
                self.assertEqual(config.find_config_dir(search_path), expected)

    def test_other_files_do_not_count(self):
        root, (decoy, real) = self.make_dirs(2)
        self.touch(decoy, "auth.sample.conf")
        os.mkdir(os.path.join(decoy, "uscmdrelay"))
        self.touch(real, "auth.conf")
        self.assertEqual(config.find_config_dir((decoy, real)), real)

    def test_tilde_is_expanded(self):
        root, (home,) = self.make_dirs(1)
        os.makedirs(os.path.join(home, ".config", "uscmdrelay"))
        self.touch(home, ".config", "uscmdrelay", "relays.conf")
        old_home = os.environ.get("HOME")
        self.addCleanup(self.restore_home, old_home)
        os.environ["HOME"] = home
        self.assertEqual(config.find_config_dir(("~/.config/uscmdrelay",)),
                         os.path.join(home, ".config", "uscmdrelay"))

    @staticmethod
    def restore_home(old_home):
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home

    def test_nothing_found_lists_the_places_searched(self):
        root, (first, second) = self.make_dirs(2)
        self.touch(first, "relays.sample.conf")
        with self.assertRaises(ConfigError) as caught:
            config.find_config_dir((first, second, "~/nowhere"))
        self.assertEqual(str(caught.exception),
                         "no configuration found: none of %s, %s, ~/nowhere holds auth.conf "
                         "or relays.conf; write a first one with 'uscmdrelay init "
                         "--config-dir %s', or pass --config-dir DIR"
                         % (first, second, "/etc/uscmdrelay" if os.geteuid() == 0
                            else "~/.config/uscmdrelay"))

    def test_default_search_path(self):
        self.assertEqual(config.SEARCH_PATH, ("/etc/uscmdrelay", "/etc/opt/uscmdrelay",
                                              "~/.config/uscmdrelay"))


if __name__ == "__main__":
    unittest.main()
