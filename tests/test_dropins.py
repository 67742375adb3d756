"""Drop-in directories end to end: relays.d/ and auth.d/ through `configtest` and the server.

`configtest` runs as a real process (the built .pyz; the `Source*` classes repeat every
test against the source tree) on real directories; the server tests start the real
server and talk to it over 127.0.0.1, reloading it with a real SIGHUP.
"""

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from tests import support
from tests.support import KEY, OTHER_KEY, request, start_server

THIRD_KEY = "third-key-0123456789abcdef"
WAIT_SECONDS = 15.0
COMMAND_TIMEOUT = 60.0

NOT_DROPINS = ("x.conf~", "x.conf.dpkg-old", "x.conf.dpkg-dist", "x.conf.bak", "README",
               "x.CONF", ".x.conf")
# What those files hold: were any of them read, configtest would fail.
UNREADABLE = "[default]\nbroken = echo 'unbalanced\n"


def _fingerprint(key):
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _auth(key, clusters="default", description=None):
    text = "[%s]\nauth_clusters = %s\n" % (key, clusters)
    if description:
        text += "description = %s\n" % description
    return text


class DropinConfigtestTest(unittest.TestCase):
    program = "pyz"

    def setUp(self):
        self.dir = self.make_dir()
        # Files checked by --relays/--auth live elsewhere, like Ansible's temporary copies.
        self.outside = self.make_dir()

    def make_dir(self):
        directory = tempfile.mkdtemp(prefix="uscmdrelay-dropins-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def write(self, relative, text, mode=None, base=None):
        """Writes `relative` under the config dir (or `base`); returns its path.

        Files under auth.* get mode 0600 unless `mode` says otherwise."""
        path = os.path.join(base or self.dir, relative)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        if mode is None and relative.startswith("auth"):
            mode = 0o600
        if mode is not None:
            os.chmod(path, mode)
        return path

    def path(self, relative):
        return os.path.join(self.dir, relative)

    def configtest(self, *args):
        """Runs `configtest --config-dir DIR ARGS`; returns (status, stdout, stderr)."""
        process = subprocess.Popen(
            support.command(self.program) + ["--config-dir", self.dir, "configtest"]
            + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True,
            env=support.environment(self.program))
        stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        return process.returncode, stdout, stderr

    def assert_ok(self, *args):
        """configtest ARGS passes; returns (files read, warnings)."""
        status, stdout, stderr = self.configtest(*args)
        self.assertEqual((status, stderr), (0, ""), stdout)
        lines = stdout.splitlines()
        self.assertEqual(lines[0], "Config OK")
        files = [line[len("files: "):].split(", ") for line in lines
                 if line.startswith("files: ")]
        self.assertEqual(len(files), 1, stdout)
        warnings = [line[len("warning: "):] for line in lines
                    if line.startswith("warning: ")]
        return files[0], warnings

    def assert_config_error(self, message, *args):
        status, stdout, stderr = self.configtest(*args)
        self.assertEqual((status, stdout, stderr), (2, "", "Config error: %s\n" % message))

    def write_basic_auth(self):
        return self.write("auth.conf", _auth(KEY, "*"))

    # -- reading order -------------------------------------------------------------------

    def test_dropins_are_read_in_lexical_order_after_the_main_file(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\ntrue.max_args = 0\n")
        for name, cluster in (("20-b.conf", "b"), ("10-a.conf", "a"), ("9-c.conf", "c")):
            self.write("relays.d/" + name,
                       "[%s]\ntrue = /bin/true\ntrue.max_args = 0\n" % cluster)
        self.write("auth.conf", _auth(KEY, "default, a, b, c"))
        self.write("auth.d/20-y.conf", _auth(OTHER_KEY))
        self.write("auth.d/10-x.conf", _auth(THIRD_KEY))
        files, warnings = self.assert_ok()
        self.assertEqual(files, [self.path(name) for name in (
            "relays.conf", "relays.d/10-a.conf", "relays.d/20-b.conf", "relays.d/9-c.conf",
            "auth.conf", "auth.d/10-x.conf", "auth.d/20-y.conf")])
        self.assertEqual(warnings, [])
        status, stdout, _ = self.configtest()
        self.assertIn("\nkeys: 3, clusters: 4, commands: 4\n", stdout)

    def test_main_files_may_be_absent_when_the_dropin_dirs_exist(self):
        self.write("relays.d/web.conf", "[web]\ntrue = /bin/true\ntrue.max_args = 0\n")
        self.write("auth.d/ops-team.conf", _auth(KEY, "web"))
        files, warnings = self.assert_ok()
        self.assertEqual(files, [self.path("relays.d/web.conf"),
                                 self.path("auth.d/ops-team.conf")])
        self.assertEqual(warnings, [])

    def test_without_main_file_or_dropin_dir_the_main_file_is_missing(self):
        self.write("relays.d/web.conf", "[web]\ntrue = /bin/true\n")
        self.assert_config_error("%s: file not found" % self.path("auth.conf"))

    def test_empty_relays_dir_without_relays_conf_defines_no_clusters(self):
        os.mkdir(self.path("relays.d"))
        self.write_basic_auth()
        self.assert_config_error(
            "%s: no clusters defined; add a section such as [default] with a line "
            "'name = command'" % self.path("relays.conf"))

    def test_files_not_ending_in_conf_are_ignored(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("relays.d/x.conf", "[x]\ntrue = /bin/true\n")
        self.write_basic_auth()
        for name in NOT_DROPINS:
            # Broken, clashing, and (auth) readable by all: each would fail if read.
            self.write("relays.d/" + name, UNREADABLE)
            self.write("auth.d/" + name, _auth(KEY, "*") + "typo = 1\n", mode=0o644)
        files, _ = self.assert_ok()
        self.assertEqual(files, [self.path("relays.conf"), self.path("relays.d/x.conf"),
                                 self.path("auth.conf")])

    # -- a section in two files ------------------------------------------------------------

    def test_cluster_in_main_file_and_dropin_is_an_error_naming_both(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n\n[ops]\nx = /bin/true\n")
        self.write("relays.d/ops.conf", "[ops]\ny = /bin/true\n")
        self.write_basic_auth()
        self.assert_config_error("%s: [ops] is already defined in %s"
                                 % (self.path("relays.d/ops.conf"), self.path("relays.conf")))

    def test_cluster_in_two_dropins_is_an_error_naming_the_one_read_first(self):
        # Lexical order: "10-" is read before "9-".
        self.write("relays.d/9-b.conf", "[ops]\ny = /bin/true\n")
        self.write("relays.d/10-a.conf", "[ops]\nx = /bin/true\n")
        self.write_basic_auth()
        self.assert_config_error("%s: [ops] is already defined in %s"
                                 % (self.path("relays.d/9-b.conf"),
                                    self.path("relays.d/10-a.conf")))

    def test_key_in_two_auth_files_is_an_error_naming_both_but_not_the_key(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("auth.conf", _auth(KEY))
        # The same key, hashed: the same grant.
        hashed = "sha256:" + hashlib.sha256(KEY.encode("utf-8")).hexdigest()
        self.write("auth.d/team.conf", _auth(hashed, "*"))
        status, stdout, stderr = self.configtest()
        self.assertEqual(stderr, "Config error: %s: [key %s] is already defined in %s\n"
                         % (self.path("auth.d/team.conf"), _fingerprint(KEY),
                            self.path("auth.conf")))
        self.assertNotIn(KEY, stderr)
        self.assertEqual(status, 2)

    # -- the mode rule ------------------------------------------------------------------

    def test_auth_dropin_open_to_group_or_others_is_refused(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write_basic_auth()
        path = self.write("auth.d/team.conf", _auth(OTHER_KEY))
        for mode in (0o644, 0o640, 0o604, 0o660, 0o601):
            with self.subTest(mode=oct(mode)):
                os.chmod(path, mode)
                self.assert_config_error(
                    "%s: mode %04o lets group or others access the keys; run chmod 600 %s"
                    % (path, mode, path))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "needs root to give a file to another user")
    def test_auth_dropin_owned_by_another_user_is_refused(self):
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            self.skipTest("no user 'nobody'")
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write_basic_auth()
        path = self.write("auth.d/team.conf", _auth(OTHER_KEY))
        os.chown(path, nobody, -1)
        self.assert_config_error("%s: owned by uid %d, but uscmdrelay runs as uid %d; "
                                 "chown it to that user and chmod 600 it"
                                 % (path, nobody, os.geteuid()))

    # -- links, modes and owners of the files checked with --relays/--auth -----------------

    def test_file_checked_with_relays_or_auth_may_not_be_a_link_or_writable_by_others(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write_basic_auth()
        for option, name, text, mode in (
                ("--relays", "web.conf", "[web]\ntrue = /bin/true\n", 0o644),
                ("--auth", "team.conf", _auth(OTHER_KEY), 0o600)):
            new = self.write(name, text, base=self.outside, mode=mode)
            link = os.path.join(self.outside, "link-" + name)
            os.symlink(new, link)
            for dropin in ((), ("--dropin",)):
                with self.subTest(option=option, dropin=dropin):
                    self.assert_ok(option, new, *dropin)
                    self.assert_config_error(
                        "%s: is a symbolic link; a config file must be a real file (replace "
                        "the link with the file it points to)" % link, option, link, *dropin)
            os.chmod(new, 0o664)
            self.assert_config_error(
                "%s: writable by group or others (mode 0664); run chmod go-w %s" % (new, new)
                if option == "--relays" else
                "%s: mode 0664 lets group or others access the keys; run chmod 600 %s"
                % (new, new), option, new)

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "needs root to give files to another user")
    def test_ansible_validate_as_root_on_files_owned_by_the_service_user(self):
        # What the sample role does: the config dir, relays.d and auth.conf belong to the
        # service user; root validates a temporary copy owned by it with --user.
        try:
            service = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            self.skipTest("no user 'nobody'")
        self.write("relays.d/base.conf", "[default]\ntrue = /bin/true\n")
        self.write_basic_auth()
        for name in ("", "relays.d", "auth.conf"):
            os.chown(self.path(name) if name else self.dir, service, -1)
        new = self.write("tmpXYZ", "[web]\ntrue = /bin/true\n", base=self.outside)
        os.chown(new, service, -1)
        self.assert_ok("--user", str(service), "--relays", new, "--dropin", "web.conf")
        # Without --user, root refuses a config dir another user could change.
        self.assert_config_error(
            "%s: owned by uid %d, but uscmdrelay runs as uid 0; chown it to root"
            % (self.dir, service), "--relays", new, "--dropin", "web.conf")

    # -- configtest --relays FILE ---------------------------------------------------------

    def test_relays_file_is_checked_as_relays_conf_with_the_dropins(self):
        self.write("relays.conf", "[default]\nold = /bin/true\n")
        self.write("relays.d/ops.conf", "[ops]\nx = /bin/true\n")
        self.write_basic_auth()
        new = self.write("new-relays", "[default]\nnew = /bin/true\n", base=self.outside)
        files, _ = self.assert_ok("--relays", new)
        self.assertEqual(files, [new, self.path("relays.d/ops.conf"), self.path("auth.conf")])
        # Cross-file checks still apply, and errors name FILE.
        self.write("new-relays", "[ops]\ny = /bin/true\n", base=self.outside)
        self.assert_config_error("%s: [ops] is already defined in %s"
                                 % (self.path("relays.d/ops.conf"), new), "--relays", new)
        self.write("new-relays", "[default]\nx = echo 'unbalanced\n", base=self.outside)
        self.assert_config_error("%s: [default] x: No closing quotation" % new,
                                 "--relays", new)

    def test_relays_dropin_is_checked_in_its_lexical_place(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("relays.d/10-a.conf", "[a]\ntrue = /bin/true\n")
        self.write("relays.d/30-c.conf", "[c]\ntrue = /bin/true\n")
        self.write_basic_auth()
        new = self.write("20-b.conf", "[b]\ntrue = /bin/true\n", base=self.outside)
        files, _ = self.assert_ok("--relays", new, "--dropin")
        self.assertEqual(files, [self.path("relays.conf"), self.path("relays.d/10-a.conf"),
                                 new, self.path("relays.d/30-c.conf"),
                                 self.path("auth.conf")])
        # Read after 10-a.conf and before 30-c.conf: which file a clash names shows it.
        self.write("20-b.conf", "[a]\ntrue = /bin/true\n", base=self.outside)
        self.assert_config_error("%s: [a] is already defined in %s"
                                 % (new, self.path("relays.d/10-a.conf")),
                                 "--relays", new, "--dropin")
        self.write("20-b.conf", "[c]\ntrue = /bin/true\n", base=self.outside)
        self.assert_config_error("%s: [c] is already defined in %s"
                                 % (self.path("relays.d/30-c.conf"), new),
                                 "--relays", new, "--dropin")

    def test_relays_dropin_name_replaces_the_installed_file_of_that_name(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("relays.d/ops.conf", "[ops]\nold = /bin/true\n")
        self.write("relays.d/web.conf", "[web]\ntrue = /bin/true\n")
        self.write_basic_auth()
        # An update of ops.conf, under the name Ansible gives its temporary copy.
        new = self.write(".source.conf", "[ops]\nnew = /bin/true\n", base=self.outside)
        files, _ = self.assert_ok("--relays", new, "--dropin", "ops.conf")
        self.assertEqual(files, [self.path("relays.conf"), new,
                                 self.path("relays.d/web.conf"), self.path("auth.conf")])
        # Under its own name (relays.d/.source.conf, read first) it is one more file,
        # and clashes with the installed one.
        self.assert_config_error("%s: [ops] is already defined in %s"
                                 % (self.path("relays.d/ops.conf"), new),
                                 "--relays", new, "--dropin")
        # A new name takes its own place in the order.
        files, _ = self.assert_ok("--relays", self.write(
            ".source.conf", "[new]\nx = /bin/true\n", base=self.outside),
            "--dropin", "00-first.conf")
        self.assertEqual(files[:2], [self.path("relays.conf"), new])

    def test_relays_file_checked_before_any_auth_file_exists(self):
        new = self.write("relays", "[default]\ntrue = /bin/true\n", base=self.outside)
        for args in (("--relays", new), ("--relays", new, "--dropin", "base.conf")):
            with self.subTest(args=args):
                files, warnings = self.assert_ok(*args)
                self.assertEqual(files, [new])
                self.assertIn("%s: not there (yet); checked without it"
                              % self.path("auth.conf"), warnings)

    # -- configtest --auth FILE ---------------------------------------------------------

    def test_auth_file_is_checked_as_auth_conf_with_the_dropins(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("auth.conf", _auth(KEY, description="old"))
        self.write("auth.d/team.conf", _auth(OTHER_KEY))
        new = self.write("new-auth", _auth(KEY, description="new"), base=self.outside,
                         mode=0o600)
        files, _ = self.assert_ok("--auth", new)
        self.assertEqual(files, [self.path("relays.conf"), new,
                                 self.path("auth.d/team.conf")])
        self.write("new-auth", _auth(OTHER_KEY), base=self.outside, mode=0o600)
        self.assert_config_error("%s: [key %s] is already defined in %s"
                                 % (self.path("auth.d/team.conf"), _fingerprint(OTHER_KEY),
                                    new), "--auth", new)
        os.chmod(new, 0o644)
        self.assert_config_error("%s: mode 0644 lets group or others access the keys; run "
                                 "chmod 600 %s" % (new, new), "--auth", new)

    def test_auth_dropin_name_replaces_the_installed_file_of_that_name(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("auth.conf", _auth(KEY))
        self.write("auth.d/team.conf", _auth(OTHER_KEY, description="old"))
        new = self.write(".source.conf", _auth(OTHER_KEY, description="new"),
                         base=self.outside, mode=0o600)
        files, _ = self.assert_ok("--auth", new, "--dropin", "team.conf")
        self.assertEqual(files, [self.path("relays.conf"), self.path("auth.conf"), new])
        # Under its own name (auth.d/.source.conf, read first): a clash.
        self.assert_config_error("%s: [key %s] is already defined in %s"
                                 % (self.path("auth.d/team.conf"),
                                    _fingerprint(OTHER_KEY), new),
                                 "--auth", new, "--dropin")

    def test_auth_file_checked_before_any_relays_file_exists(self):
        new = self.write("auth", _auth(KEY, "default, ops"), base=self.outside, mode=0o600)
        for args in (("--auth", new), ("--auth", new, "--dropin", "team.conf")):
            with self.subTest(args=args):
                files, warnings = self.assert_ok(*args)
                self.assertEqual(files, [new])
                self.assertIn("%s: not there (yet); checked without it"
                              % self.path("relays.conf"), warnings)
                self.assertTrue(any("auth_clusters: cluster 'ops' is not defined" in warning
                                    for warning in warnings), warnings)

    def test_cluster_granted_but_defined_in_no_file_is_only_a_warning(self):
        self.write("relays.d/web.conf", "[web]\ntrue = /bin/true\ntrue.max_args = 0\n")
        self.write("auth.d/team.conf", _auth(KEY, "web, later"))
        files, warnings = self.assert_ok()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith(
            "%s: [key %s] auth_clusters: cluster 'later' is not defined"
            % (self.path("auth.d/team.conf"), _fingerprint(KEY))), warnings)

    def test_dropin_without_relays_or_auth_is_a_usage_error(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write_basic_auth()
        status, stdout, stderr = self.configtest("--dropin")
        self.assertEqual((status, stdout, stderr), (
            2, "", "uscmdrelay: --dropin goes with --relays FILE or --auth FILE\n"))


class SourceDropinConfigtestTest(DropinConfigtestTest):
    program = "src"


class DropinServerTest(unittest.TestCase):
    program = "pyz"

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="uscmdrelay-dropins-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, relative, text, mode=0o600):
        path = os.path.join(self.dir, relative)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Written whole under another name, then renamed: a reload never sees half a file.
        with open(path + ".tmp", "w") as handle:
            handle.write(text)
        os.chmod(path + ".tmp", mode)
        os.rename(path + ".tmp", path)
        return path

    def reload(self, server, marker):
        """Sends SIGHUP and waits for one more log line containing `marker`."""
        count = server.log_text().count(marker)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_SECONDS
        while server.log_text().count(marker) <= count:
            if time.monotonic() > deadline:
                self.fail("no %r in the log after SIGHUP:\n%s" % (marker, server.log_text()))
            time.sleep(0.02)

    def test_server_serves_commands_and_keys_from_dropins_only(self):
        self.write("relays.d/10-web.conf", "[web]\nhello = echo hello from web\n")
        self.write("relays.d/20-db.conf", "[db]\nhello = echo hello from db\n")
        self.write("auth.d/web-team.conf", _auth(KEY, "web"))
        self.write("auth.d/db-team.conf", _auth(OTHER_KEY, "db"))
        server = start_server(self, self.dir, program=self.program)
        reply = request(server.port, command="web::hello")
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello from web\n"), reply)
        reply = request(server.port, auth_key=OTHER_KEY, command="db::hello")
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello from db\n"), reply)
        reply = request(server.port, command="db::hello")
        self.assertEqual(reply["code"], 1002, reply)

    def test_sighup_reload_picks_up_new_dropins_and_refuses_a_clash(self):
        self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        self.write("auth.conf", _auth(KEY, "default, late"))
        server = start_server(self, self.dir, program=self.program)
        self.assertEqual(request(server.port, command="late::hello")["code"], 2003)
        self.assertEqual(request(server.port, auth_key=OTHER_KEY)["code"], 1001)
        late = self.write("relays.d/late.conf", "[late]\nhello = echo hello, late\n", 0o644)
        self.write("auth.d/other.conf", _auth(OTHER_KEY, "late"))
        self.reload(server, "configuration reloaded")
        reply = request(server.port, command="late::hello")
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello, late\n"), reply)
        self.assertEqual(request(server.port, auth_key=OTHER_KEY,
                                 command="late::hello")["code"], 0)
        # A second file defining [late]: the reload is refused, the running config stays.
        clash = self.write("relays.d/zz.conf", "[late]\nhello = echo clash\n", 0o644)
        self.reload(server, "reload refused")
        self.assertIn("Config error: %s: [late] is already defined in %s" % (clash, late),
                      server.log_text())
        reply = request(server.port, command="late::hello")
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello, late\n"), reply)
        # Renamed away (a .dpkg-old, say): ignored by the next reload.
        os.rename(clash, clash + ".dpkg-old")
        self.reload(server, "configuration reloaded")
        self.assertEqual(request(server.port, command="late::hello")["stdout"],
                         "hello, late\n")

    def test_sighup_after_a_file_is_swapped_for_a_link_refuses_and_keeps_the_old_config(self):
        relays_path = self.write("relays.conf", "[default]\nwhich = echo original\n", 0o644)
        self.write("auth.conf", _auth(KEY))
        server = start_server(self, self.dir, program=self.program)
        self.assertEqual(request(server.port, command="which")["stdout"], "original\n")
        # Swapped for a link to a file another user controls (here: any other file).
        elsewhere = tempfile.mkdtemp(prefix="uscmdrelay-dropins-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        target = os.path.join(elsewhere, "relays.conf")
        with open(target, "w") as handle:
            handle.write("[default]\nwhich = echo swapped\n")
        os.symlink(target, relays_path + ".tmp")
        os.rename(relays_path + ".tmp", relays_path)
        self.reload(server, "reload refused")
        self.assertIn("Config error: %s: is a symbolic link; a config file must be a real "
                      "file (replace the link with the file it points to)" % relays_path,
                      server.log_text())
        self.assertEqual(request(server.port, command="which")["stdout"], "original\n")
        # A real file again, but in a drop-in directory anyone may write to.
        self.write("relays.conf", "[default]\nwhich = echo renewed\n", 0o644)
        self.write("relays.d/web.conf", "[web]\nt = true\n", 0o644)
        os.chmod(os.path.join(self.dir, "relays.d"), 0o777)
        self.reload(server, "reload refused")
        self.assertIn("Config error: %s: writable by group or others (mode 0777); run chmod "
                      "go-w %s" % ((os.path.join(self.dir, "relays.d"),) * 2),
                      server.log_text())
        self.assertEqual(request(server.port, command="which")["stdout"], "original\n")
        os.chmod(os.path.join(self.dir, "relays.d"), 0o755)
        self.reload(server, "configuration reloaded")
        self.assertEqual(request(server.port, command="which")["stdout"], "renewed\n")

    def test_server_refuses_to_start_when_a_cluster_is_in_two_files(self):
        first = self.write("relays.conf", "[default]\ntrue = /bin/true\n")
        second = self.write("relays.d/a.conf", "[default]\nfalse = /bin/false\n")
        self.write("auth.conf", _auth(KEY))
        process = subprocess.Popen(
            support.command(self.program) + ["--config-dir", self.dir, "--host",
                                             "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, env=support.environment(self.program))
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.assertEqual((process.returncode, stderr), (
            2, "Config error: %s: [default] is already defined in %s\n" % (second, first)))


class SourceDropinServerTest(DropinServerTest):
    program = "src"


if __name__ == "__main__":
    unittest.main()
