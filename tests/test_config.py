"""Unit tests for uscmdrelay.config: INI rules, relays.conf, auth.conf, loading and finding.

Config errors are what users read, so these tests assert their exact text.
"""

import io
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

from tests import support
from uscmdrelay import config, keys
from uscmdrelay.guards import warn_about_unguarded_arguments
from uscmdrelay.config import ConfigError
from uscmdrelay.options import Options

RELAYS = "/etc/uscmdrelay/relays.conf"
AUTH = "/etc/uscmdrelay/auth.conf"
KEY = "s3cret-key-0123456789abcdefXYZ"
HIDDEN = "key " + config.key_fingerprint(KEY)
JOINED = ("this indented line would be joined to the value above; remove the leading white "
          "space (values are one line)")
# A base64 key ends in '=': written without brackets it parses as an option.
B64_KEY = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZw=="
OTHER = "other-key-0123456789abcdef"


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
         "timeout, min_args, max_args, arg_pattern, arg_choices, max_running, shell, cwd, "
         "max_output)"),
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
        ("indented setting joined to the command line",
         "[web]\nrestart = systemctl restart\n  restart.arg_choices = nginx\n",
         RELAYS + ": [web] restart: line 3: " + JOINED),
        ("indented with a tab", "[web]\nstatus = systemctl status\n\tnginx\n",
         RELAYS + ": [web] status: line 3: " + JOINED),
        ("indented deeper than indented options", "[web]\n  a = true\n    b = true\n",
         RELAYS + ": [web] a: line 3: " + JOINED),
        ("indented section joined to the value above", "[a]\nx = y\n  [b]\n  z = w\n",
         RELAYS + ": [a] x: line 3: " + JOINED),
        ("indented line before a line without '='", "[a]\nx = y\n  z\nfoo bar\n",
         RELAYS + ": [a] x: line 3: " + JOINED),
        ("indented line before a duplicate option", "[a]\nx = y\n z\nx = w\n",
         RELAYS + ": [a] x: line 3: " + JOINED),
        ("duplicate section before an indented line", "[a]\n[a]\nx = y\n z\n",
         RELAYS + ": line 2: section [a] is defined twice"),
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

    def test_indentation_configparser_does_not_join_is_allowed(self):
        cases = [("every option indented alike", "[a]\n  x = one\n  y = two\n"),
                 ("less indented than the option above", "[a]\n    x = one\n  y = two\n"),
                 ("after a blank line", "[a]\nx = one\n\n  y = two\n"),
                 ("after an indented comment", "[a]\nx = one\n  # note\n  y = two\n"),
                 ("indented ; comment", "[a]\nx = one\n    ; y = three\ny = two\n"),
                 ("indented header after a blank line", "[a]\nx = one\n\n  [b]\n  y = two\n")]
        for name, text in cases:
            with self.subTest(case=name):
                parsed = relays(text)
                self.assertEqual(parsed["a"]["x"], ["one"])
                self.assertEqual(parsed.get("b", parsed["a"])["y"], ["two"])

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
        # An unknown option is not named (it may be a key without brackets): its line is.
        ("unknown option", "[%s]\nauth_clusters = a\nclusters = b\n" % KEY,
         AUTH + ": [%s]: line 3: unknown option (expected one of: auth_clusters, "
         "description, allowed_hosts; a key goes in brackets)" % HIDDEN),
        ("option names are case-sensitive", "[%s]\nAuth_Clusters = a\n" % KEY,
         AUTH + ": [%s]: line 2: unknown option (expected one of: auth_clusters, "
         "description, allowed_hosts; a key goes in brackets)" % HIDDEN),
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
         AUTH + ": [%s]: line 3: option is defined twice" % HIDDEN),
        ("key typed without brackets", "%s\nauth_clusters = a\n" % KEY,
         AUTH + ": line 1: this line is outside any [section]"),
        ("key typed without a closing bracket",
         "[other-0123456789abcdef]\nauth_clusters = a\n[%s\n" % KEY,
         AUTH + ": line 3: this line is not 'name = value'"),
        ("[DEFAULT] section", "[DEFAULT]\nauth_clusters = *\n",
         AUTH + ": [DEFAULT]: a [DEFAULT] section is not supported (the default cluster "
         "is spelled [default])"),
        ("indented key section joined to the clusters above",
         "[%s]\nauth_clusters = a\n  [%s]\n  auth_clusters = b\n" % (OTHER, KEY),
         AUTH + ": [key %s]: line 3: %s" % (config.key_fingerprint(OTHER), JOINED)),
        ("indented line after a key's option", "[%s]\nauth_clusters = a\n\t%s\n" % (KEY, KEY),
         AUTH + ": [%s]: line 3: %s" % (HIDDEN, JOINED)),
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
            "key ('uscmdrelay hash-key --generate' makes one)"
            % config.key_fingerprint("short")])
        warnings = []
        self.assertEqual(auth("# nobody yet\n", warnings), {})
        self.assertEqual(warnings, [AUTH + ": no keys defined; every request will be "
                                    "refused"])

    def test_comments_and_interpolation_off_in_auth_conf(self):
        keys = auth("# a comment\n; another\n[%s]\n# auth_clusters = *\n"
                    "description = 100%% ops; %%(x)s\nauth_clusters = ops\n" % KEY)
        self.assertEqual(keys[KEY].label, "100% ops; %(x)s")
        self.assertEqual(keys[KEY].clusters, frozenset(["ops"]))


class KeyShapedLinesTest(unittest.TestCase):
    """A key typed in the wrong place of an auth file never appears in a config error."""

    # Every place a key-shaped line can land in; {key} is the key, {bare} without '='.
    PLACES = [
        ("before any section", "{key}\n[%s]\nauth_clusters = *\n" % OTHER),
        ("an option line", "[%s]\nauth_clusters = *\n{key}\n" % OTHER),
        ("an option line with a value", "[%s]\nauth_clusters = *\n{key} = yes\n" % OTHER),
        ("an option line first in its section", "[%s]\n{key}\nauth_clusters = *\n" % OTHER),
        ("an indented option after the header", "[%s]\n  {key}\nauth_clusters = *\n" % OTHER),
        ("the same option line twice", "[%s]\nauth_clusters = *\n{key}\n{key}\n" % OTHER),
        ("an indented line", "[%s]\nauth_clusters = *\n  {key}\n" % OTHER),
        ("an indented line under a key section", "[{key}]\nauth_clusters = *\n  {key}\n"),
        ("an indented key section", "[%s]\nauth_clusters = *\n  [{key}]\n"
         "  auth_clusters = *\n" % OTHER),
        ("a line without '='", "[%s]\nauth_clusters = *\n{bare}\n" % OTHER),
        ("a section without its closing bracket", "[%s]\nauth_clusters = *\n[{key}\n" % OTHER),
        ("a section with spaces", "[ {key} ]\nauth_clusters = *\n"),
        ("a section defined twice", "[{key}]\nauth_clusters = *\n[{key}]\nauth_clusters = *\n"),
        ("a section without auth_clusters", "[{key}]\ndescription = ci\n"),
        ("a hashed section gone wrong", "[sha256:{key}]\nauth_clusters = *\n"),
        ("allowed_hosts", "[%s]\nauth_clusters = *\nallowed_hosts = ::1 {key}\n" % OTHER),
        ("allowed_hosts, bare", "[%s]\nauth_clusters = *\nallowed_hosts = {bare}\n" % OTHER),
    ]

    def assert_hidden(self, message, key):
        bare = key.rstrip("=")
        self.assertNotIn(bare, message)
        self.assertNotIn(bare[:12], message)

    def test_parsed_auth_text_errors_never_show_the_key(self):
        for key in (B64_KEY, KEY):
            for place, template in self.PLACES:
                with self.subTest(key=key, place=place):
                    text = template.format(key=key, bare=key.rstrip("="))
                    with self.assertRaises(ConfigError) as caught:
                        auth(text)
                    self.assert_hidden(str(caught.exception), key)

    def test_auth_files_and_dropins_errors_never_show_the_key(self):
        for name in ("auth.conf", "auth.d/10-team.conf"):
            for place, template in self.PLACES:
                with self.subTest(file=name, place=place):
                    directory = support.make_config_dir(
                        self, auth=None, relays="[default]\ntrue = /bin/true\n")
                    path = os.path.join(directory, name)
                    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                    with open(path, "w") as handle:
                        handle.write(template.format(key=B64_KEY, bare=B64_KEY.rstrip("=")))
                    os.chmod(path, 0o600)
                    with self.assertRaises(ConfigError) as caught:
                        config.load_config(directory)
                    self.assertTrue(str(caught.exception).startswith(path + ": "),
                                    str(caught.exception))
                    self.assert_hidden(str(caught.exception), B64_KEY)

    def test_key_typed_without_brackets_is_found_by_its_line(self):
        with self.assertRaises(ConfigError) as caught:
            auth("[%s]\nauth_clusters = *\n# the new key:\n%s\n" % (OTHER, B64_KEY))
        self.assertEqual(str(caught.exception),
                         AUTH + ": [key %s]: line 4: unknown option (expected one of: "
                         "auth_clusters, description, allowed_hosts; a key goes in brackets)"
                         % config.key_fingerprint(OTHER))


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

    def test_samples_load_once_copied_with_a_private_auth_conf_and_real_keys(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        samples = os.path.join(support.ROOT, "samples")
        with open(os.path.join(samples, "auth.sample.conf"), encoding="utf-8") as handle:
            sample = handle.read()
        # The placeholders are refused as they stand: replaced, as the README says.
        with open(os.path.join(directory, "auth.conf"), "w", encoding="utf-8") as handle:
            handle.write(sample.replace("replace-me-with-a-long-random-key",
                                        "Zq3vT7pW1xR8mL2nB5cY4dKs"))
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
        warn_about_unguarded_arguments(clusters, Options(shell_exec=shell_exec), warnings)
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
                warn_about_unguarded_arguments(
                    clusters, Options(shell_exec=shell_exec), warnings)
                self.assertEqual(warnings, [])
                with open(os.path.join(support.ROOT, "samples", "relays.sample.conf"),
                          encoding="utf-8") as handle:
                    clusters = config.parse_relays(config.read_ini(handle, RELAYS), RELAYS)
                warn_about_unguarded_arguments(
                    clusters, Options(shell_exec=shell_exec), warnings)
                self.assertEqual(warnings, [])


LINKED_FILE = ("is a symbolic link; a config file must be a real file (replace the link with "
               "the file it points to)")
LINKED_DIR = ("is a symbolic link; a drop-in directory must be a real directory (replace the "
              "link with the directory it points to)")
AS_ROOT = unittest.skipUnless(os.geteuid() == 0, "needs root to give a file to another user")


def writable(path, mode):
    return "%s: writable by group or others (mode %04o); run chmod go-w %s" % (path, mode, path)


class FileSafetyTest(unittest.TestCase):
    """Files are opened without following links and checked through the descriptor read;
    the config dir and drop-in directories must not be writable by another user."""

    def setUp(self):
        self.dir = support.make_config_dir(
            self, auth="[%s]\nauth_clusters = *\n" % KEY, relays="[default]\nt = true\n")
        self.elsewhere = tempfile.mkdtemp(prefix="uscmdrelay-test-")
        self.addCleanup(shutil.rmtree, self.elsewhere, True)

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def assert_refused(self, message, **kwargs):
        with self.assertRaises(ConfigError) as caught:
            config.load_config(self.dir, **kwargs)
        self.assertEqual(str(caught.exception), message)

    def replace_with_link(self, name):
        """Moves the config dir's `name` elsewhere and puts a link to it in its place."""
        target = os.path.join(self.elsewhere, os.path.basename(name))
        os.rename(self.path(name), target)
        os.symlink(target, self.path(name))
        return self.path(name)

    def write(self, name, text, mode=0o644):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def test_linked_auth_conf_and_relays_conf_are_refused(self):
        for name in ("auth.conf", "relays.conf"):
            with self.subTest(name=name):
                path = self.replace_with_link(name)
                self.assert_refused("%s: %s" % (path, LINKED_FILE))
                os.unlink(path)
                os.rename(os.path.join(self.elsewhere, name), path)
                config.load_config(self.dir)

    def test_linked_dropin_file_and_dropin_directory_are_refused(self):
        linked = self.write("relays.d/10-web.conf", "[web]\nt = true\n")
        self.write("auth.d/10-team.conf", "[%s]\nauth_clusters = *\n" % OTHER, 0o600)
        config.load_config(self.dir)
        self.replace_with_link("relays.d/10-web.conf")
        self.assert_refused("%s: %s" % (linked, LINKED_FILE))
        os.unlink(linked)
        directory = self.replace_with_link("auth.d")
        self.assert_refused("%s: %s" % (directory, LINKED_DIR))

    def test_dangling_link_in_place_of_relays_conf_is_refused_not_skipped(self):
        # With relays.d there, a missing relays.conf is fine: a link is not missing.
        self.write("relays.d/10-web.conf", "[web]\nt = true\n")
        os.unlink(self.path("relays.conf"))
        os.symlink(os.path.join(self.elsewhere, "nothing"), self.path("relays.conf"))
        self.assert_refused("%s: %s" % (self.path("relays.conf"), LINKED_FILE))

    def test_the_config_dir_itself_may_be_a_link(self):
        link = os.path.join(self.elsewhere, "config")
        os.symlink(self.dir, link)
        loaded = config.load_config(link)
        self.assertEqual(loaded.files, [os.path.join(link, "relays.conf"),
                                        os.path.join(link, "auth.conf")])

    def test_relays_files_writable_by_group_or_others_are_refused(self):
        dropin = self.write("relays.d/10-web.conf", "[web]\nt = true\n")
        for path in (self.path("relays.conf"), dropin):
            for mode in (0o666, 0o664, 0o646, 0o620, 0o602):
                with self.subTest(path=path, mode=oct(mode)):
                    os.chmod(path, mode)
                    self.assert_refused(writable(path, mode))
            for mode in (0o644, 0o640, 0o604, 0o600, 0o444, 0o755):
                with self.subTest(path=path, mode=oct(mode)):
                    os.chmod(path, mode)
                    config.load_config(self.dir)

    def test_directories_writable_by_group_or_others_are_refused(self):
        self.write("relays.d/10-web.conf", "[web]\nt = true\n")
        self.write("auth.d/10-team.conf", "[%s]\nauth_clusters = *\n" % OTHER, 0o600)
        for path in (self.dir, self.path("relays.d"), self.path("auth.d")):
            for mode in (0o777, 0o770, 0o707, 0o1777, 0o730):
                with self.subTest(path=path, mode=oct(mode)):
                    os.chmod(path, mode)
                    self.assert_refused(writable(path, mode))
            for mode in (0o755, 0o750, 0o700, 0o555):
                with self.subTest(path=path, mode=oct(mode)):
                    os.chmod(path, mode)
                    config.load_config(self.dir)
            os.chmod(path, 0o700)

    @AS_ROOT
    def test_files_and_directories_owned_by_another_user_are_refused(self):
        self.write("relays.d/10-web.conf", "[web]\nt = true\n")
        self.write("auth.d/10-team.conf", "[%s]\nauth_clusters = *\n" % OTHER, 0o600)
        for name in ("", "relays.conf", "relays.d", "relays.d/10-web.conf", "auth.d"):
            path = self.path(name) if name else self.dir
            with self.subTest(path=path):
                os.chown(path, 65534, -1)
                self.assert_refused("%s: owned by uid 65534, but uscmdrelay runs as uid 0; "
                                    "chown it to root" % path)
                os.chown(path, 0, -1)
        config.load_config(self.dir)

    @AS_ROOT
    def test_relays_files_may_belong_to_root_or_to_the_servers_user(self):
        # As for `configtest --user 65534`: auth files must be 65534's, the rest root's
        # or 65534's.
        for name in ("auth.conf", "relays.conf"):
            os.chown(self.path(name), 65534, -1)
        config.load_config(self.dir, owner=65534)
        os.chown(self.path("relays.conf"), 0, -1)
        config.load_config(self.dir, owner=65534)
        os.chown(self.path("relays.conf"), 12345, -1)
        self.assert_refused("%s: owned by uid 12345, but uscmdrelay runs as uid 65534; chown "
                            "it to root or to that user" % self.path("relays.conf"), owner=65534)

    def test_not_a_regular_file_or_not_a_directory_is_refused(self):
        os.unlink(self.path("relays.conf"))
        os.mkdir(self.path("relays.conf"))
        self.assert_refused("%s: is a directory; a config file must be a regular file"
                            % self.path("relays.conf"))
        os.rmdir(self.path("relays.conf"))
        self.write("relays.conf", "[default]\nt = true\n")
        self.write("relays.d", "[web]\nt = true\n")
        self.assert_refused("%s: is a regular file; a drop-in directory must be a directory"
                            % self.path("relays.d"))
        os.unlink(self.path("relays.d"))
        # A socket cannot be opened at all (ENXIO): what is there is still named.
        os.unlink(self.path("relays.conf"))
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(self.path("relays.conf"))
            self.assert_refused("%s: is a socket; a config file must be a regular file"
                                % self.path("relays.conf"))

    def test_fifo_in_place_of_relays_conf_is_refused_without_hanging(self):
        # Opened without O_NONBLOCK, a FIFO with no writer blocks open() for good: run in
        # a child with a deadline, so that a regression fails instead of hanging the suite.
        os.unlink(self.path("relays.conf"))
        os.mkfifo(self.path("relays.conf"), 0o644)
        result = subprocess.run(
            support.command() + ["--config-dir", self.dir, "configtest"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=60, env=support.environment())
        self.assertEqual((result.returncode, result.stderr), (
            2, "Config error: %s: is a FIFO (named pipe); a config file must be a regular "
            "file\n" % self.path("relays.conf")))


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
