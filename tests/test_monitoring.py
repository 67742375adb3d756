"""The Nagios and Icinga 2 samples, validated by the real tools, and a real Nagios 4
daemon running a service through `uscmdrelay check` against a real relay.

Skipped with a reason where nagios4 (apt: nagios4-core) or icinga2 (apt: icinga2-bin) is
absent or cannot run here. Every daemon started is stopped by its PID.
"""

import getpass
import grp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from tests import support

NAGIOS = shutil.which("nagios4") or "/usr/sbin/nagios4"
ICINGA2 = shutil.which("icinga2") or "/usr/sbin/icinga2"
NAGIOS_SAMPLE = os.path.join(support.ROOT, "samples", "nagios", "uscmdrelay.cfg")
ICINGA2_SAMPLE = os.path.join(support.ROOT, "samples", "icinga2", "uscmdrelay.conf")
STATE_TIMEOUT = 60.0

NAGIOS_OBJECTS = """
define timeperiod {
    timeperiod_name 24x7
    alias           always
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}
define command {
    command_name notify-none
    command_line /bin/true
}
define contact {
    contact_name                  nobody
    host_notifications_enabled    0
    service_notifications_enabled 0
    host_notification_period      24x7
    service_notification_period   24x7
    host_notification_options     n
    service_notification_options  n
    host_notification_commands    notify-none
    service_notification_commands notify-none
}
define host {
    host_name             web1
    address               127.0.0.1
    max_check_attempts    1
    check_period          24x7
    contacts              nobody
    notification_interval 0
    notification_period   24x7
}
define service {
    name                   generic-service
    register               0
    max_check_attempts     1
    check_interval         1
    retry_interval         1
    check_period           24x7
    notification_interval  0
    notification_period    24x7
    contacts               nobody
}
"""

NAGIOS_MAIN = """\
log_file={d}/nagios.log
cfg_file={d}/objects.cfg
cfg_file={sample}
resource_file={d}/resource.cfg
status_file={d}/status.dat
temp_file={d}/nagios.tmp
temp_path={d}
lock_file={d}/nagios.lock
check_result_path={d}/checkresults
state_retention_file={d}/retention.dat
retain_state_information=0
object_cache_file={d}/objects.cache
precached_object_file={d}/objects.precache
command_file={d}/nagios.cmd
nagios_user={user}
nagios_group={group}
interval_length=1
check_result_reaper_frequency=1
service_inter_check_delay_method=n
host_inter_check_delay_method=n
status_update_interval=1
enable_notifications=0
"""

RELAYS = r"""
[default]
check_load = printf 'OK - load average: 0.10|load1=0.1;4;6;0\n'
check_load.max_args = 0
check_disk = sh -c 'echo "DISK WARNING - w=$1 c=$2 p=$3|free=12%;20;10"; exit 1' check_disk $ARG1$ $ARG2$ $ARG3$
"""


def nagios_dir(test, sample=NAGIOS_SAMPLE):
    """A temporary directory holding a minimal nagios.cfg that includes `sample`."""
    if not os.access(NAGIOS, os.X_OK):
        test.skipTest("nagios4 is absent (apt-get install nagios4-core)")
    directory = tempfile.mkdtemp(prefix="uscmdrelay-nagios-")
    test.addCleanup(shutil.rmtree, directory, True)
    os.mkdir(os.path.join(directory, "checkresults"))
    _write(os.path.join(directory, "objects.cfg"), NAGIOS_OBJECTS)
    _write(os.path.join(directory, "resource.cfg"), "$USER1$=/usr/lib/nagios/plugins\n")
    _write(os.path.join(directory, "nagios.cfg"), NAGIOS_MAIN.format(
        d=directory, sample=sample, user=getpass.getuser(),
        group=grp.getgrgid(os.getgid()).gr_name))
    return directory


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def _run(argv, timeout=120):
    process = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=timeout)
    return process.returncode, process.stdout


class NagiosTest(unittest.TestCase):

    def test_nagios_accepts_the_sample(self):
        directory = nagios_dir(self)
        status, output = _run([NAGIOS, "-v", os.path.join(directory, "nagios.cfg")])
        self.assertEqual(status, 0, output)
        self.assertIn("Total Errors:   0", output)

    def test_a_real_nagios_checks_a_service_through_uscmdrelay(self):
        relay = support.start_server(self, config_dir=support.make_config_dir(
            self, relays=RELAYS), args=["--shutdown-timeout", "0"])
        scratch = tempfile.mkdtemp(prefix="uscmdrelay-nagios-sample-")
        self.addCleanup(shutil.rmtree, scratch, True)
        wrapper = os.path.join(scratch, "uscmdrelay")
        _write(wrapper, "#!/bin/sh\nexec %s %s \"$@\"\n" % (sys.executable, support.PYZ))
        os.chmod(wrapper, 0o755)
        key_file = os.path.join(scratch, "key")
        _write(key_file, support.KEY + "\n")
        with open(NAGIOS_SAMPLE) as handle:
            sample = handle.read()
        # The sample as installed here: this uscmdrelay, this key, this relay's port.
        sample = (sample.replace("/usr/local/bin/uscmdrelay", wrapper)
                  .replace("/etc/nagios4/uscmdrelay.key", key_file)
                  .replace("-H $HOSTADDRESS$", "-H $HOSTADDRESS$ -p %d" % relay.port))
        local_sample = os.path.join(scratch, "uscmdrelay.cfg")
        _write(local_sample, sample)
        directory = nagios_dir(self, local_sample)
        status, output = _run([NAGIOS, "-v", os.path.join(directory, "nagios.cfg")])
        self.assertEqual(status, 0, output)  # a broken sample fails here, never skips
        log = open(os.path.join(directory, "daemon.out"), "wb")
        self.addCleanup(log.close)
        nagios = subprocess.Popen([NAGIOS, os.path.join(directory, "nagios.cfg")],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.addCleanup(_stop, nagios)
        services = {}
        deadline = time.monotonic() + STATE_TIMEOUT
        while time.monotonic() < deadline and len(services) < 2:
            if nagios.poll() is not None:
                with open(os.path.join(directory, "daemon.out")) as handle:
                    self.skipTest("nagios4 cannot run here: %s" % handle.read()[-400:])
            time.sleep(0.5)
            services = _checked_services(os.path.join(directory, "status.dat"))
        self.assertEqual(services.get("Load"), ("0", "OK - load average: 0.10",
                                                "load1=0.1;4;6;0"), services)
        self.assertEqual(services.get("Disk /"), ("1", "DISK WARNING - w=20% c=10% p=/",
                                                  "free=12%;20;10"), services)


def _stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _checked_services(status_path):
    """{service_description: (current_state, plugin_output, performance_data)} of the
    services of status.dat that have been checked."""
    try:
        with open(status_path) as handle:
            text = handle.read()
    except OSError:
        return {}
    found = {}
    for block in re.findall(r"servicestatus \{\n(.*?)\n\s*\}", text, re.S):
        fields = dict(line.strip().split("=", 1) for line in block.splitlines()
                      if "=" in line)
        if fields.get("has_been_checked") == "1":
            found[fields["service_description"]] = (
                fields["current_state"], fields["plugin_output"],
                fields["performance_data"])
    return found


class Icinga2Test(unittest.TestCase):

    def test_icinga2_accepts_the_sample(self):
        if not os.access(ICINGA2, os.X_OK):
            self.skipTest("icinga2 is absent (apt-get install icinga2-bin)")
        directory = tempfile.mkdtemp(prefix="uscmdrelay-icinga2-")
        self.addCleanup(shutil.rmtree, directory, True)
        for name in ("data", "log", "cache", "spool", "run"):
            os.mkdir(os.path.join(directory, name))
        config = os.path.join(directory, "icinga2.conf")
        _write(config, 'include <itl>\ninclude "%s"\n' % ICINGA2_SAMPLE + """
object Host "web1" {
  address = "127.0.0.1"
  check_command = "dummy"
}
object Service "disk" {
  host_name = "web1"
  check_command = "uscmdrelay"
  vars.uscmdrelay_command = "check_disk"
  vars.uscmdrelay_arguments = [ "20%", "10%", "/" ]
}
""")
        # Every path icinga2 writes to is in the temporary directory, as this user.
        status, output = _run([ICINGA2, "daemon", "-C", "-c", config] + [
            "-D%s=%s" % (name, os.path.join(directory, sub)) for name, sub in (
                ("DataDir", "data"), ("LogDir", "log"), ("CacheDir", "cache"),
                ("SpoolDir", "spool"), ("InitRunDir", "run"))] + [
            "-DRunAsUser=%s" % getpass.getuser(),
            "-DRunAsGroup=%s" % grp.getgrgid(os.getgid()).gr_name])
        if status != 0 and "Permission denied" in output:
            self.skipTest("icinga2 cannot run here: %s" % output[-300:])
        self.assertEqual(status, 0, output)
        self.assertIn("Finished validating the configuration", output)


if __name__ == "__main__":
    unittest.main()
