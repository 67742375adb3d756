"""`uscmdrelay import-nrpe FILE`: an nrpe.cfg's commands as a relays.conf section.

Reads FILE and the files of its `include=` and `include_dir=` lines as NRPE does, and
prints one section: each `command[name]=line` becomes `name = line`, its `$ARGn$` kept
as placeholders and `name.max_args` set. A line that needs a shell (a pipe, a
redirection, a variable...) gets `name.shell = yes`, since NRPE ran every line with
/bin/sh. What is not carried over is listed, with its file and line, in a comment at
the top; warnings go to stderr. Nothing here writes a file.
"""

import os
import re
import shlex
import sys

from .placeholders import MAX_PLACEHOLDER, template_for

EXIT_CONVERTED = 0
EXIT_NOTHING = 1
_COMMAND = re.compile(r"\Acommand\[(.*)\]\Z")
# Characters that make /bin/sh do more than split words as shlex does.
_SHELL_CHARACTERS = set("|&;<>()$`*?[]~#\n")
# A placeholder that is the whole of a quoted word: the quotes can go, since in a shell
# line uscmdrelay quotes the argument itself.
_QUOTED_PLACEHOLDER = re.compile(r"""(?<![\w$])(['"])(\$ARG[1-9]\$)\1(?![\w$'"])""")
_NOT_CARRIED = {
    "allowed_hosts": "in uscmdrelay a key says where it may be used from: set "
                     "allowed_hosts on the key's section of auth.conf",
    "dont_blame_nrpe": "a command with placeholders takes exactly that many arguments "
                       "(NAME.max_args; with dont_blame_nrpe=0 NRPE refused them all), "
                       "and they reach it literally; limit them with NAME.arg_pattern",
    "allow_bash_command_substitution": "an argument can never add shell syntax",
    "nasty_metachars": "an argument can never add shell syntax, so there is no "
                       "blacklist to configure",
    "command_prefix": "not supported: put the prefix (such as sudo) in each command line",
    "command_timeout": "use the server's --timeout, or NAME.timeout per command",
    "connection_timeout": "use the server's --request-timeout",
    "server_port": "use the server's --port (default 7777)",
    "server_address": "use the server's --host",
    "listen_queue_size": "not configurable",
    "nrpe_user": "run the server as that user (User= in its systemd unit)",
    "nrpe_group": "run the server as that group (Group= in its systemd unit)",
    "pid_file": "not needed: the server runs in the foreground (systemd tracks it)",
    "log_facility": "the server logs to stderr or --log FILE",
    "log_file": "use the server's --log FILE",
    "debug": "use the server's --log-level DEBUG",
    "disable_syslog": "the server logs to stderr or --log FILE",
    "keep_env_vars": "commands get the server's environment",
    "allow_weak_random_seed": "not needed",
}


class _Import(object):
    """The state of one conversion: commands {name: (line, where)}, notes, warnings."""

    def __init__(self, stderr):
        self.commands = {}
        self.notes = []  # (where, text) for the header
        self.stderr = stderr
        self.seen = set()

    def note(self, where, text, warn=False):
        self.notes.append((where, text))
        if warn:
            self.stderr.write("uscmdrelay: import-nrpe: %s: %s\n" % (where, text))

    def read(self, path, where=None):
        """Reads one config file (and its includes), as NRPE does."""
        real = os.path.realpath(path)
        if real in self.seen:
            self.note(where or path, "%s is included twice; read once" % path, warn=True)
            return
        self.seen.add(real)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                lines = handle.read().splitlines()
        except OSError as error:
            self.note(where or path, "cannot read %s: %s" % (path, error.strerror),
                      warn=True)
            return
        for number, raw in enumerate(lines, 1):
            self.directive(path, number, raw)

    def directive(self, path, number, raw):
        line = raw.strip()
        if not line or line.startswith("#"):
            return
        where = "%s:%d" % (path, number)
        name, equals, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not equals:
            self.note(where, "%r is not a name=value line; skipped" % line, warn=True)
            return
        match = _COMMAND.match(name)
        if match:
            self.command(match.group(1), value, where)
        elif name in ("include", "include_dir"):
            target = value if os.path.isabs(value) else os.path.join(
                os.path.dirname(path), value)
            if name == "include":
                self.read(target, where)
            else:
                self.read_dir(target, where)
        else:
            reason = _NOT_CARRIED.get(name)
            if name.startswith("ssl_"):
                reason = "TLS is set with the server's --tls-cert, --tls-key and " \
                         "--tls-client-ca"
            self.note(where, "%s=%s: %s" % (name, value, reason or "unknown directive"))

    def read_dir(self, directory, where):
        """include_dir: every *.cfg file below `directory`, in sorted order."""
        if not os.path.isdir(directory):
            self.note(where, "cannot read directory %s" % directory, warn=True)
            return
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".cfg"):
                    self.read(os.path.join(root, name), where)

    def command(self, name, line, where):
        problem = _bad_name(name)
        if problem:
            self.note(where, "command[%s]: %s; skipped" % (name, problem), warn=True)
            return
        try:
            converted, shell = convert_line(line)
        except ValueError as error:
            self.note(where, "command[%s]: %s; skipped" % (name, error), warn=True)
            return
        if name in self.commands:
            self.note(self.commands[name][2], "command[%s] is defined again at %s, "
                      "which NRPE uses; this one is left out" % (name, where))
        self.commands[name] = (converted, shell, where)


def _bad_name(name):
    if not name or name != name.strip():
        return "an empty name, or one with white space around it"
    for text in ("::", ".", "=", ":", "[", "]", "#", ";"):
        if text in name:
            return "%r is not allowed in a relays.conf command name" % text
    return None


def convert_line(line):
    """Returns (relays.conf command line, needs a shell) for an NRPE command line;
    raises ValueError when it cannot be carried over faithfully."""
    parts = _nrpe_parts(line)
    numbers = [part for part in parts if isinstance(part, int)]
    if any(number > MAX_PLACEHOLDER for number in numbers):
        raise ValueError("uses $ARG%d$; uscmdrelay has $ARG1$ to $ARG%d$"
                         % (max(numbers), MAX_PLACEHOLDER))
    if numbers:
        text = "".join("$ARG%d$" % part if isinstance(part, int) else
                       part.replace("$", "$$") for part in parts)
    else:
        text = "".join(parts)
    literal = "".join(part for part in parts if not isinstance(part, int))
    shell = bool(_SHELL_CHARACTERS.intersection(literal)) or "=" in literal.split(None, 1)[0]
    if shell and numbers:
        text = _QUOTED_PLACEHOLDER.sub(r"\2", text)
    try:
        argv = shlex.split(text)
        template = template_for(text, argv)
        if shell and template is not None:
            template.check_shell()
    except ValueError as error:
        raise ValueError("cannot be carried over as it is (%s)" % error)
    if not argv:
        raise ValueError("an empty command line")
    if (template.highest if template else 0) != (max(numbers) if numbers else 0):
        raise ValueError("holds text that would read as a placeholder")
    return text, shell


def _nrpe_parts(line):
    """NRPE's own reading of a command line (nrpe.c process_macros): text between two
    `$` is `ARGn` (a placeholder), empty (`$$`: one `$`), or kept with its `$`s."""
    parts = []
    pieces = line.split("$")
    parts.append(pieces[0])
    index = 1
    while index < len(pieces):
        macro = pieces[index]
        if index + 1 >= len(pieces):  # an unclosed `$`: NRPE keeps the text
            parts.append("$" + macro)
            break
        if macro.startswith("ARG"):
            digits = re.match(r"\d*", macro[3:]).group(0)
            if digits and int(digits) >= 1:
                parts.append(int(digits))
        elif macro == "":
            parts.append("$")
        else:
            parts.append("$%s$" % macro)
        parts.append(pieces[index + 1])
        index += 2
    return [part for part in parts if part != ""]


def render(imported, path, cluster):
    """The relays.conf text for what `imported` read from `path`."""
    out = ["# Converted from %s by uscmdrelay import-nrpe." % path,
           "# Check it (uscmdrelay configtest --relays FILE), and guard the arguments of",
           "# each command that takes some: NAME.arg_pattern or NAME.arg_choices."]
    if imported.notes:
        out.append("# Not carried over:")
        out.extend("#   %s: %s" % (where, " ".join(text.split()))
                   for where, text in imported.notes)
    out.append("")
    out.append("[%s]" % cluster)
    for name, (line, shell, where) in imported.commands.items():
        template = template_for(line, shlex.split(line))
        out.append("# %s" % where)
        out.append("%s = %s" % (name, line))
        out.append("%s.max_args = %d" % (name, template.highest if template else 0))
        if shell:
            out.append("%s.shell = yes" % name)
    return "\n".join(out) + "\n"


def run_import(path, cluster="default", stdout=None, stderr=None):
    """Prints the converted section; returns 0, or 1 when no command was converted."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    imported = _Import(stderr)
    imported.read(path)
    if not imported.commands:
        stderr.write("uscmdrelay: import-nrpe: no command could be converted from %s\n"
                     % path)
        return EXIT_NOTHING
    stdout.write(render(imported, path, cluster))
    return EXIT_CONVERTED
