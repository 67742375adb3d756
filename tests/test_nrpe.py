"""`uscmdrelay import-nrpe`: real nrpe.cfg files in, relays.conf sections out that the
real .pyz accepts (`configtest --relays`) and a real server runs."""

import os
import re
import subprocess
import unittest

from tests import support

DEBIAN_NRPE_CFG = "/etc/nagios/nrpe.cfg"  # shipped by Debian's nagios-nrpe-server
FIXTURE = os.path.join(support.FIXTURES, "nrpe", "nrpe.cfg")
NOTHING = os.path.join(support.FIXTURES, "nrpe-empty", "nrpe.cfg")


def run_pyz(*args):
    process = subprocess.run(support.command("pyz") + list(args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    return process.returncode, process.stdout, process.stderr


def line_of(path, text):
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith(text):
                return number
    raise AssertionError("%s not in %s" % (text, path))


class ImportTest(unittest.TestCase):

    def imported(self, path):
        status, out, err = run_pyz("import-nrpe", path)
        self.assertEqual(status, 0, err)
        directory = support.make_config_dir(self, relays=None)
        relays = os.path.join(directory, "relays.conf")
        with open(relays, "w") as handle:
            handle.write(out)
        status, checked, problem = run_pyz("configtest", "--config-dir", directory,
                                           "--relays", relays)
        self.assertEqual(status, 0, problem + checked)
        self.assertIn("Config OK", checked)
        return out, err, directory

    def test_debians_nrpe_cfg_converts_and_passes_configtest(self):
        if not os.path.exists(DEBIAN_NRPE_CFG):
            self.skipTest("%s is absent (apt-get install nagios-nrpe-server)"
                          % DEBIAN_NRPE_CFG)
        out, err, _ = self.imported(DEBIAN_NRPE_CFG)
        self.assertIn("\n[default]\n", out)
        self.assertIn("\ncheck_users = /usr/lib/nagios/plugins/check_users -w 5 -c 10\n"
                      "check_users.max_args = 0\n", out)
        self.assertIn("#   %s:%d: allowed_hosts=127.0.0.1,::1: in uscmdrelay a key says "
                      "where it may be used from" % (
                          DEBIAN_NRPE_CFG, line_of(DEBIAN_NRPE_CFG, "allowed_hosts=")), out)
        self.assertIn("#   %s:%d: dont_blame_nrpe=0: " % (
            DEBIAN_NRPE_CFG, line_of(DEBIAN_NRPE_CFG, "dont_blame_nrpe=")), out)

    def test_fixture_with_includes_arguments_and_odd_lines(self):
        out, err, directory = self.imported(FIXTURE)
        where = os.path.dirname(FIXTURE)
        for expected in (
                "check_users = /usr/lib/nagios/plugins/check_users -w 10 -c 20\n"
                "check_users.max_args = 0\n",
                "check_disk = /usr/lib/nagios/plugins/check_disk -w $ARG1$ -c $ARG2$ -p "
                "$ARG3$\ncheck_disk.max_args = 3\n# ",
                "check_load = /usr/lib/nagios/plugins/check_load -w $ARG1$ -c $ARG2$\n"
                "check_load.max_args = 2\n# ",
                "check_mem = free -m | awk '/Mem/ {print \"MEM OK - used \" $3 \"|used=\" "
                "$3}'\ncheck_mem.max_args = 0\ncheck_mem.shell = yes\n",
                # An argv command keeps its quotes (shlex reads them as /bin/sh did).
                "check_proc = /usr/lib/nagios/plugins/check_procs -C '$ARG1$' -w "
                "\"$ARG2$\"\ncheck_proc.max_args = 2\n# ",
                # NRPE's $$ is one $: doubled again next to a placeholder; a shell's.
                "check_cost = echo 'price $$5' $ARG1$\ncheck_cost.max_args = 1\n"
                "check_cost.shell = yes\n",
                # In a shell line the quotes around a lone placeholder go (it is quoted).
                "check_log = tail -1 $ARG1$ | grep -c $ARG2$\ncheck_log.max_args = 2\n"
                "check_log.shell = yes\n",
                "# %s/local.cfg:1\ncheck_local = /bin/echo OK - local $ARG1$\n" % where,
                "# %s/nrpe.d/10-web.cfg:1\ncheck_http = " % where,
                "# %s/nrpe.d/sub/20-db.cfg:1\ncheck_db = /usr/local/bin/check_db --quiet > "
                "/dev/null 2>&1 && echo OK || echo CRITICAL\ncheck_db.max_args = 0\n"
                "check_db.shell = yes\n" % where):
            self.assertIn(expected, out)
        self.assertNotIn("\nnever = ", out)  # nrpe.d/ignored.txt: include_dir reads *.cfg only
        notes = re.findall(r"^#   (\S+): (.*)$", out, re.M)
        self.assertEqual([(place.rsplit(":", 1)[1], text.split(":")[0]) for place, text
                          in notes], [
            ("2", "server_port=5666"), ("3", "allowed_hosts=127.0.0.1,10.0.0.0/8"),
            ("4", "dont_blame_nrpe=1"), ("5", "command_prefix=/usr/bin/sudo"),
            ("6", "nasty_metachars=\"|`&><'\\\\[]{};\\r\\n\""),
            ("7", "ssl_version=TLSv1.2+"), ("8", "frobnicate=yes"),
            ("9", "'this line has no equals sign' is not a name=value line; skipped"),
            ("17", "command[check_many]"), ("18", "command[bad.name]"),
            ("11", "command[check_users] is defined again at %s" % FIXTURE),
            ("22", "cannot read %s/missing.cfg" % where)])
        self.assertIn("frobnicate=yes: unknown directive", out)
        self.assertEqual(err.splitlines(), [
            "uscmdrelay: import-nrpe: %s:9: 'this line has no equals sign' is not a "
            "name=value line; skipped" % FIXTURE,
            "uscmdrelay: import-nrpe: %s:17: command[check_many]: uses $ARG12$; uscmdrelay "
            "has $ARG1$ to $ARG9$; skipped" % FIXTURE,
            "uscmdrelay: import-nrpe: %s:18: command[bad.name]: '.' is not allowed in a "
            "relays.conf command name; skipped" % FIXTURE,
            "uscmdrelay: import-nrpe: %s:22: cannot read %s/missing.cfg: No such file or "
            "directory" % (FIXTURE, where)])
        # And a real server runs the converted commands with hostile arguments.
        server = support.start_server(self, config_dir=directory)
        for command, arguments, stdout in (
                ("check_local", ["; id #"], "OK - local ; id #\n"),
                ("check_cost", ["$(id)"], "price $5 $(id)\n")):
            reply = support.request(server.port, command=command, arguments=arguments)
            self.assertEqual((reply["code"], reply.get("stdout")), (0, stdout), reply)

    def test_nothing_to_convert_exits_1(self):
        status, out, err = run_pyz("import-nrpe", NOTHING)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.splitlines()[-1], "uscmdrelay: import-nrpe: no command could be "
                         "converted from %s" % NOTHING)
        status, out, err = run_pyz("import-nrpe", NOTHING + ".missing")
        self.assertEqual((status, out), (1, ""))


if __name__ == "__main__":
    unittest.main()
