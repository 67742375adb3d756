"""The sample Ansible role (samples/ansible/), run for real with ansible-playbook.

The role is run with `-i localhost, -c local` into a temporary root directory with
service management off: every file, unit files included, is written under that root and
systemctl is never run (a stand-in `systemctl` first on PATH records any call). Skipped
when ansible-playbook is absent (`.ci/run` installs ansible-core into its own
virtualenv). The playbook does not depend on the interpreter running the tests, so it
runs under one interpreter only: the one whose version matches ansible-playbook's.
"""

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import unittest

from tests import support
from tests.support import KEY, OTHER_KEY, ServerProcess, request
from uscmdrelay.fingerprint import key_fingerprint

ANSIBLE_VENV = os.environ.get("USCMDRELAY_ANSIBLE_VENV", "/tmp/uscmdrelay-ansible-venv")
SAMPLES = os.path.join(support.ROOT, "samples", "ansible")
ROLES = os.path.join(SAMPLES, "roles")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PLAYBOOK_TIMEOUT = 180.0

BIN = "/usr/local/bin/uscmdrelay"
CONFIG_DIR = "/etc/uscmdrelay"
UNIT_DIR = "/etc/systemd/system"

PLAY = """\
- name: Deploy uscmdrelay into a temporary root
  hosts: localhost
  gather_facts: false
  roles:
    - uscmdrelay
"""

# Guarded, so that validate:'s configtest --strict has nothing to warn about.
RELAYS = {
    "base": {"default": {"echo": "echo", "echo.arg_pattern": "[^-].*", "true": "/bin/true",
                         "true.max_args": 0, "date": "date +%Y-%m-%d",
                         "date.max_args": 0}},
    "ops": {"ops": {"hello": "echo hello from ops", "hello.timeout": 5,
                    "hello.shell": False, "hello.max_args": 1,
                    "hello.arg_choices": "again"}},
}
HASHED_OTHER_KEY = "sha256:" + hashlib.sha256(OTHER_KEY.encode("utf-8")).hexdigest()
KEYS = [
    {"key": KEY, "description": "test client", "clusters": ["default", "ops"]},
    {"key": HASHED_OTHER_KEY, "description": "admin", "clusters": "*",
     "allowed_hosts": ["127.0.0.1/32", "::1"]},
]
RECAP = re.compile(r"^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.MULTILINE)
RESTART_HANDLER = re.compile(r"RUNNING HANDLER \[[^\]]*Restart the uscmdrelay service\]")
RELOAD_HANDLER = re.compile(r"RUNNING HANDLER \[[^\]]*Reload the uscmdrelay configuration\]")

FAKE_SYSTEMCTL = """\
#!/bin/sh
echo "$@" >> "{record}"
exit 1
"""


def _find_ansible_playbook():
    found = shutil.which("ansible-playbook")
    if found:
        return found
    candidate = os.path.join(ANSIBLE_VENV, "bin", "ansible-playbook")
    return candidate if os.access(candidate, os.X_OK) else None


def _interpreter_of(script):
    """The Python that runs `script`, from its #! line; None if it cannot be told."""
    with open(script, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").strip()
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0]


def _version_of(python):
    """(major, minor) of `python`, or None."""
    try:
        output = subprocess.check_output(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            stdin=subprocess.DEVNULL, universal_newlines=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = output.split()
    return int(major), int(minor)


def run_ansible_command(argv, env, cwd):
    """Runs an ansible command in its own session, bounded by PLAYBOOK_TIMEOUT (then
    its whole group is killed); returns (exit status, stdout and stderr)."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                               cwd=cwd, start_new_session=True)
    try:
        output = process.communicate(timeout=PLAYBOOK_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        raise AssertionError("%s ran past %g s:\n%s" % (os.path.basename(argv[0]),
                                                       PLAYBOOK_TIMEOUT, output))
    return process.returncode, output


def ansible_playbook_or_skip(what):
    """(ansible-playbook, the Python that runs it), or raises SkipTest: when it is not
    installed, or when this interpreter is not that Python (`what` is tested once)."""
    playbook = _find_ansible_playbook()
    if playbook is None:
        raise unittest.SkipTest("ansible-playbook is not installed (.ci/run installs "
                                "ansible-core into %s)" % ANSIBLE_VENV)
    python = _interpreter_of(playbook)
    version = python and _version_of(python)
    if version is None:
        raise unittest.SkipTest("cannot tell which Python runs %s" % playbook)
    if tuple(sys.version_info[:2]) != version:
        raise unittest.SkipTest(
            "%s is tested once, under the Python that runs ansible-playbook (%d.%d); "
            "this is %d.%d" % ((what,) + version + tuple(sys.version_info[:2])))
    return playbook, python


def _variables(root, **overrides):
    variables = {
        "uscmdrelay_root": root,
        "uscmdrelay_manage_service": False,
        "uscmdrelay_user": "",
        "uscmdrelay_group": "",
        "uscmdrelay_create_user": False,
        "uscmdrelay_pyz_src": support.PYZ,
        "uscmdrelay_python": sys.executable,
        "uscmdrelay_port": 7777,
        "uscmdrelay_keys": KEYS,
        "uscmdrelay_relays": RELAYS,
    }
    variables.update(overrides)
    return variables


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class AnsibleRoleTest(unittest.TestCase):
    """setUpClass installs once into a root; tests that run the role again work on a copy."""

    @classmethod
    def setUpClass(cls):
        cls.playbook, cls.ansible_python = ansible_playbook_or_skip("the role")
        cls.workdir = tempfile.mkdtemp(prefix="uscmdrelay-ansible-")
        try:
            cls._prepare()
            cls.root = os.path.join(cls.workdir, "installed")
            cls.install_result = cls.run_playbook(_variables(cls.root))
        except BaseException:
            shutil.rmtree(cls.workdir, True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.workdir, True)

    @classmethod
    def _prepare(cls):
        """An ansible.cfg, a playbook and a PATH whose `systemctl` records its calls."""
        cls.config = os.path.join(cls.workdir, "ansible.cfg")
        with open(cls.config, "w") as handle:
            handle.write("[defaults]\nretry_files_enabled = False\n"
                         "interpreter_python = %s\n" % cls.ansible_python)
        cls.play = os.path.join(cls.workdir, "play.yml")
        with open(cls.play, "w") as handle:
            handle.write(PLAY)
        fake_bin = os.path.join(cls.workdir, "bin")
        os.mkdir(fake_bin)
        cls.systemctl_record = os.path.join(cls.workdir, "systemctl-calls")
        systemctl = os.path.join(fake_bin, "systemctl")
        with open(systemctl, "w") as handle:
            handle.write(FAKE_SYSTEMCTL.format(record=cls.systemctl_record))
        os.chmod(systemctl, 0o755)
        home = os.path.join(cls.workdir, "ansible-home")
        env = dict((name, value) for name, value in os.environ.items()
                   if not name.startswith("ANSIBLE_"))
        env.update({
            "PATH": fake_bin + os.pathsep + env.get("PATH", os.defpath),
            "ANSIBLE_CONFIG": cls.config,
            "ANSIBLE_HOME": home,
            "ANSIBLE_LOCAL_TEMP": os.path.join(home, "local-tmp"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(home, "remote-tmp"),
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(home, "collections"),
            "ANSIBLE_ROLES_PATH": ROLES,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # ansible-core refuses to start under a non-UTF-8 locale.
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
        })
        cls.env = env

    @classmethod
    def run_playbook(cls, variables, playbook=None, extra=()):
        """Runs the playbook with `variables`; returns (exit status, output)."""
        fd, path = tempfile.mkstemp(suffix=".json", dir=cls.workdir)
        with os.fdopen(fd, "w") as handle:
            json.dump(variables, handle)
        argv = [cls.playbook, "-i", "localhost,", "-c", "local",
                "-e", "ansible_python_interpreter=" + cls.ansible_python,
                "-e", "@" + path] + list(extra) + [playbook or cls.play]
        return run_ansible_command(argv, cls.env, cls.workdir)

    def assert_played(self, result, changed=None):
        """Checks the run succeeded (and changed `changed` things); returns its output."""
        returncode, output = result
        self.assertEqual(returncode, 0, output)
        recap = RECAP.findall(output)
        self.assertEqual(len(recap), 1, output)
        ok, did_change, unreachable, failed = (int(n) for n in recap[0])
        self.assertEqual((unreachable, failed), (0, 0), output)
        if changed is not None:
            self.assertEqual(did_change, changed, output)
        return output

    def copy_of_installed_root(self):
        """A private copy of the installed root (contents, modes and times preserved)."""
        copy = tempfile.mkdtemp(prefix="root-", dir=self.workdir)
        os.rmdir(copy)
        shutil.copytree(self.root, copy, symlinks=True)
        self.addCleanup(shutil.rmtree, copy, True)
        return copy

    def configtest(self, root):
        """Runs the installed program's configtest on the installed config dir."""
        process = subprocess.Popen(
            [sys.executable, root + BIN, "--config-dir", root + CONFIG_DIR, "configtest"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True)
        output = process.communicate(timeout=60)[0]
        return process.returncode, output

    def files_line(self, output):
        lines = [line for line in output.splitlines() if line.startswith("files: ")]
        self.assertEqual(len(lines), 1, output)
        return lines[0][len("files: "):].split(", ")

    # -- the first run ------------------------------------------------------------------

    def test_install_writes_the_program_and_config_with_their_modes(self):
        self.assert_played(self.install_result)
        program = self.root + BIN
        self.assertEqual(_mode(program), 0o755)
        self.assertEqual(_read(program), _read(support.PYZ))
        config_dir = self.root + CONFIG_DIR
        self.assertEqual(_mode(config_dir), 0o700)
        self.assertEqual(_mode(config_dir + "/auth.conf"), 0o600)
        self.assertEqual(os.stat(config_dir + "/auth.conf").st_uid, os.geteuid())
        self.assertEqual(sorted(os.listdir(config_dir)), ["auth.conf", "relays.d"])
        self.assertEqual(sorted(os.listdir(config_dir + "/relays.d")),
                         ["base.conf", "ops.conf"])
        self.assertIn(b"\n[ops]\nhello = echo hello from ops\nhello.timeout = 5\n"
                      b"hello.shell = no\nhello.max_args = 1\nhello.arg_choices = again\n",
                      _read(config_dir + "/relays.d/ops.conf"))

    def test_installed_configuration_passes_configtest_listing_every_file(self):
        self.assert_played(self.install_result)
        returncode, output = self.configtest(self.root)
        self.assertEqual(returncode, 0, output)
        self.assertIn("Config OK", output)
        config_dir = self.root + CONFIG_DIR
        self.assertEqual(self.files_line(output), [
            config_dir + "/relays.d/base.conf", config_dir + "/relays.d/ops.conf",
            config_dir + "/auth.conf"])
        self.assertIn("keys: 2, clusters: 2, commands: 4", output)

    def test_installed_configuration_serves_both_drop_ins_and_both_keys(self):
        self.assert_played(self.install_result)
        # The installed program is dist/uscmdrelay.pyz byte for byte (checked above).
        log_dir = tempfile.mkdtemp(prefix="log-", dir=self.workdir)
        server = ServerProcess(self.root + CONFIG_DIR,
                               log_path=os.path.join(log_dir, "server.log"))
        self.addCleanup(server.stop)
        reply = request(server.port, command="echo", arguments=["a b", "$HOME"])
        self.assertEqual((reply["code"], reply["stdout"]), (0, "a b $HOME\n"), reply)
        reply = request(server.port, command="ops::hello")
        self.assertEqual((reply["code"], reply["stdout"]), (0, "hello from ops\n"), reply)
        reply = request(server.port, command="date")
        self.assertRegex(reply["stdout"], r"^\d{4}-\d\d-\d\d\n$")
        reply = request(server.port, auth_key=OTHER_KEY, command="ops::hello")
        self.assertEqual(reply["code"], 0, reply)
        reply = request(server.port, command="ops::hello", arguments=["1", "2"])
        self.assertEqual(reply["code"], 2007, reply)  # hello.max_args = 1

    def test_install_writes_units_naming_the_real_paths_and_runs_no_systemctl(self):
        output = self.assert_played(self.install_result)
        unit_dir = self.root + UNIT_DIR
        self.assertEqual(sorted(os.listdir(unit_dir)),
                         ["uscmdrelay.service", "uscmdrelay.socket"])
        service = _read(unit_dir + "/uscmdrelay.service").decode("utf-8")
        self.assertIn("\nExecStart=%s -I %s --config-dir %s --host 0.0.0.0 --port 7777\n"
                      % (sys.executable, BIN, CONFIG_DIR), service)
        self.assertIn("\nExecReload=/bin/kill -HUP $MAINPID\n", service)
        self.assertNotIn(self.root, service)
        self.assertNotIn("\nUser=", service)  # uscmdrelay_user: ""
        self.assertIn("\nListenStream=7777\n",
                      _read(unit_dir + "/uscmdrelay.socket").decode("utf-8"))
        # Nothing enabled (no .wants links), nothing started: systemctl never ran.
        self.assertFalse(os.path.exists(self.systemctl_record),
                         "systemctl was run: %s" % (os.path.exists(self.systemctl_record)
                                                    and _read(self.systemctl_record)))
        self.assertEqual([name for name in os.listdir(unit_dir) if name.endswith(".wants")],
                         [])
        # A new program was installed: the restart handler was notified (and skipped).
        self.assertRegex(output, RESTART_HANDLER)

    @unittest.skipUnless(SYSTEMD_ANALYZE, "systemd-analyze is not installed")
    def test_installed_units_pass_systemd_analyze_verify(self):
        self.assert_played(self.install_result)
        units = [self.root + UNIT_DIR + "/uscmdrelay." + kind for kind in ("service",
                                                                           "socket")]
        process = subprocess.Popen([SYSTEMD_ANALYZE, "verify", "--man=no"] + units,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True)
        output = process.communicate(timeout=60)[0]
        self.assertEqual(process.returncode, 0, output)
        self.assertEqual([line for line in output.splitlines() if "uscmdrelay" in line],
                         [], output)

    # -- running it again ---------------------------------------------------------------

    def test_second_run_reports_no_changes(self):
        self.assert_played(self.install_result)
        root = self.copy_of_installed_root()
        output = self.assert_played(self.run_playbook(_variables(root)), changed=0)
        self.assertNotRegex(output, RESTART_HANDLER)
        self.assertNotRegex(output, RELOAD_HANDLER)

    def test_broken_relay_template_is_refused_by_validate_and_the_old_file_stays(self):
        self.assert_played(self.install_result)
        root = self.copy_of_installed_root()
        relays_dir = root + CONFIG_DIR + "/relays.d"
        before = dict((name, _read(os.path.join(relays_dir, name)))
                      for name in os.listdir(relays_dir))
        auth_before = _read(root + CONFIG_DIR + "/auth.conf")
        broken = json.loads(json.dumps(RELAYS))
        broken["ops"]["ops"]["hello"] = "sh -c 'echo unbalanced"
        returncode, output = self.run_playbook(_variables(root, uscmdrelay_relays=broken))
        self.assertNotEqual(returncode, 0, output)
        self.assertIn("failed to validate", output)
        # --as: the message names the file being replaced, not Ansible's temporary file.
        self.assertIn("Config error: %s/relays.d/ops.conf: [ops] hello: No closing "
                      "quotation" % (root + CONFIG_DIR), output)
        after = dict((name, _read(os.path.join(relays_dir, name)))
                     for name in os.listdir(relays_dir))
        self.assertEqual(after, before)  # byte-identical, and no stray temporary file
        self.assertEqual(_read(root + CONFIG_DIR + "/auth.conf"), auth_before)
        self.assertEqual(self.configtest(root)[0], 0)

    def test_relay_change_reloads_without_restart_and_only_managed_dropins_are_purged(self):
        self.assert_played(self.install_result)
        root = self.copy_of_installed_root()
        relays_dir = root + CONFIG_DIR + "/relays.d"
        # Another role's drop-in: not the role's to remove.
        with open(os.path.join(relays_dir, "other-role.conf"), "w") as handle:
            handle.write("[other]\nx = /bin/true\n")
        changed = {"base": {"default": {"echo": "echo", "echo.arg_pattern": "[^-].*",
                                        "uptime": "uptime", "uptime.max_args": 0}}}
        output = self.assert_played(self.run_playbook(
            _variables(root, uscmdrelay_relays=changed)))
        self.assertEqual(sorted(os.listdir(relays_dir)), ["base.conf", "other-role.conf"])
        self.assertIn(b"\nuptime = uptime\n", _read(relays_dir + "/base.conf"))
        self.assertRegex(output, RELOAD_HANDLER)
        self.assertNotRegex(output, RESTART_HANDLER)
        returncode, configtest = self.configtest(root)
        self.assertEqual(returncode, 0, configtest)
        self.assertEqual(self.files_line(configtest), [
            relays_dir + "/base.conf", relays_dir + "/other-role.conf",
            root + CONFIG_DIR + "/auth.conf"])

    def test_strict_validate_refuses_a_misspelled_cluster_and_an_unguarded_command(self):
        self.assert_played(self.install_result)
        root = self.copy_of_installed_root()
        config_dir = root + CONFIG_DIR
        auth_before = _read(config_dir + "/auth.conf")
        keys = json.loads(json.dumps(KEYS))
        keys[0]["clusters"] = ["default", "opps"]
        returncode, output = self.run_playbook(_variables(root, uscmdrelay_keys=keys))
        self.assertNotEqual(returncode, 0, output)
        self.assertIn("failed to validate", output)
        self.assertIn("Config error: %s/auth.conf: [key %s] auth_clusters: cluster 'opps' "
                      "is not defined in any relays file"
                      % (config_dir, key_fingerprint(KEY)), output)
        self.assertEqual(_read(config_dir + "/auth.conf"), auth_before)
        unguarded = json.loads(json.dumps(RELAYS))
        del unguarded["ops"]["ops"]["hello.max_args"], unguarded["ops"]["ops"][
            "hello.arg_choices"]
        returncode, output = self.run_playbook(_variables(root,
                                                          uscmdrelay_relays=unguarded))
        self.assertNotEqual(returncode, 0, output)
        self.assertIn("Config error: %s/relays.d/ops.conf: [ops] hello: client arguments "
                      "are appended unguarded" % config_dir, output)

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "needs root to give the files to another user")
    def test_root_deploys_config_owned_by_the_service_user(self):
        # The real deployment: Ansible runs as root, the files belong to the service user
        # and validate: runs configtest as root on files that user owns.
        self.assert_played(self.install_result)
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user 'nobody'")
        group = grp.getgrgid(user.pw_gid).gr_name
        root = tempfile.mkdtemp(prefix="root-", dir=self.workdir)
        self.addCleanup(shutil.rmtree, root, True)
        self.assert_played(self.run_playbook(_variables(
            root, uscmdrelay_user="nobody", uscmdrelay_group=group)))
        auth = os.stat(root + CONFIG_DIR + "/auth.conf")
        self.assertEqual((auth.st_uid, stat.S_IMODE(auth.st_mode)), (user.pw_uid, 0o600))
        self.assertEqual(os.stat(root + CONFIG_DIR).st_uid, user.pw_uid)
        service = _read(root + UNIT_DIR + "/uscmdrelay.service").decode("utf-8")
        self.assertIn("\nUser=nobody\nGroup=%s\n" % group, service)

    def test_site_yml_example_passes_syntax_check(self):
        returncode, output = self.run_playbook(
            {}, playbook=os.path.join(SAMPLES, "site.yml"), extra=["--syntax-check"])
        self.assertEqual(returncode, 0, output)


if __name__ == "__main__":
    unittest.main()
