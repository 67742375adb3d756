"""Finding, loading and validating the configuration: relays.conf, auth.conf and their
drop-in directories.

Everything a user can get wrong in these files becomes a `ConfigError` whose text names the
file, the section and the option, and says how to fix it; it is what `configtest` prints and
what stops the server from starting. This module parses relays.conf itself; auth.conf's
meaning lives in `keys`, the INI rules in `ini`. It only reads files: it runs nothing.
"""

import os
import shlex
import shutil

from .fingerprint import digest_fingerprint
from .ini import ConfigError, list_config_dir, read_ini, read_ini_file
from .keys import (ALL_CLUSTERS, HASHED_KEY_PREFIX, KeyGrant, key_digest, key_fingerprint,
                   parse_auth, warn_about_references)
from .guards import warn_about_unguarded_arguments
from .options import Options
from .placeholders import template_for
from .policy import SETTINGS, Policy

# The configuration's API, auth.conf's and the INI rules' parts included, so callers
# need one import.
__all__ = ["ALL_CLUSTERS", "AUTH_FILE", "Command", "Config", "ConfigError",
           "HASHED_KEY_PREFIX", "KeyGrant", "RELAYS_FILE", "config_files",
           "find_config_dir", "key_digest", "key_fingerprint", "load_config", "parse_auth",
           "parse_relays", "read_ini", "split_command_line"]

AUTH_FILE = "auth.conf"
RELAYS_FILE = "relays.conf"
AUTH_DROPIN_DIR = "auth.d"
RELAYS_DROPIN_DIR = "relays.d"
DROPIN_SUFFIX = ".conf"
SEARCH_PATH = ("/etc/uscmdrelay", "/etc/opt/uscmdrelay", "~/.config/uscmdrelay")
# A command's `cwd` that is missing fails each request with this code.
_CWD_FAILURE_CODE = 3002


class Command(object):
    """One relay: `argv` (the configured command split with shlex), its source `line`,
    its `policy` (the NAME.SETTING lines of its section) and its `template` (a
    placeholders.Template when the line holds `$ARGn$`, else None)."""

    __slots__ = ("cluster", "name", "line", "argv", "policy", "path", "template")

    def __init__(self, cluster, name, line, argv, policy=None, path=None, template=None):
        self.cluster = cluster
        self.name = name
        self.line = line
        self.argv = argv
        self.policy = policy if policy is not None else Policy()
        self.path = path  # the file that defines it
        self.template = template
        if template is not None:
            self.policy.placeholders = template.highest

    @property
    def full_name(self):
        return self.cluster + "::" + self.name


class Config(object):
    """A loaded, valid configuration.

    `keys` maps sha256(key) to its `KeyGrant`, so the server never holds a table indexed by
    the secret itself; `clusters` maps a cluster name to {command name: Command};
    `warnings` lists what configtest reports but does not refuse.
    """

    def __init__(self, directory, keys, clusters, warnings, files=()):
        self.directory = directory
        self.keys = keys
        self.clusters = clusters
        self.warnings = warnings
        self.files = list(files)  # every file read, in the order read

    @property
    def command_count(self):
        return sum(len(commands) for commands in self.clusters.values())


def find_config_dir(search_path=SEARCH_PATH):
    """Returns the first directory of `search_path` that holds a configuration file
    (auth.conf, relays.conf) or drop-in directory (auth.d, relays.d).

    Raises ConfigError listing the places searched when there is none.
    """
    for candidate in search_path:
        directory = os.path.expanduser(candidate)
        if any(os.path.exists(os.path.join(directory, name))
               for name in (AUTH_FILE, RELAYS_FILE, AUTH_DROPIN_DIR, RELAYS_DROPIN_DIR)):
            return directory
    # The exact command: someone who copied only the .pyz has no samples/ to look at.
    raise ConfigError(
        "no configuration found",
        "none of %s holds %s or %s; write a first one with 'uscmdrelay init "
        "--config-dir %s', or pass --config-dir DIR"
        % (", ".join(search_path), AUTH_FILE, RELAYS_FILE, default_config_dir()))


def default_config_dir():
    """Where `init` writes without --config-dir: /etc/uscmdrelay for root,
    ~/.config/uscmdrelay (unexpanded) for anyone else."""
    return SEARCH_PATH[0] if os.geteuid() == 0 else SEARCH_PATH[2]


def load_config(directory, shell_exec=False, relays_file=None, auth_file=None,
                dropin=False, owner=None, shown_as=None):
    """Loads and validates the configuration in `directory`; returns a `Config`.

    That is auth.conf then auth.d/*.conf, and relays.conf then relays.d/*.conf (each in
    lexical order). `relays_file`/`auth_file` stand in for relays.conf/auth.conf, or with
    `dropin` (True, or the name it will be installed under) for a drop-in: how
    configtest checks a file before it is installed; `shown_as` is how messages name that
    file (`configtest --as`). Auth files must belong to `owner` (a uid; default: this
    process' user). Raises ConfigError.
    """
    if not os.path.exists(directory):
        # Not "relays.conf: file not found": the mistake is the directory's name.
        raise ConfigError(directory, "the config dir does not exist; check --config-dir, "
                          "or write a first configuration there with 'uscmdrelay init "
                          "--config-dir %s'" % shlex.quote(directory))
    names = {}
    if shown_as is not None:
        names[relays_file if relays_file is not None else auth_file] = shown_as

    def show(path):
        return names.get(path, path)
    warnings = []
    relays_paths = config_files(directory, RELAYS_FILE, RELAYS_DROPIN_DIR, relays_file,
                                dropin, owner)
    auth_paths = config_files(directory, AUTH_FILE, AUTH_DROPIN_DIR, auth_file, dropin,
                              owner)
    if relays_file is not None or auth_file is not None:
        # Checking one new file before it is installed: the other part may not be
        # deployed yet (Ansible may write auth before relays or the other way round).
        if relays_file is None:
            relays_paths = _existing(relays_paths, warnings)
        if auth_file is None:
            auth_paths = _existing(auth_paths, warnings)
    clusters = _merge(relays_paths, lambda path: parse_relays(
        _read(path, directory, relays_file, owner, show(path)), show(path),
        allow_empty=True), lambda cluster: "[%s]" % cluster, show)
    if not clusters and (relays_paths or relays_file is None and auth_file is None):
        raise ConfigError(show(relays_paths[0]) if relays_paths else
                          os.path.join(directory, RELAYS_FILE),
                          "no clusters defined; add a section such as [default] "
                          "with a line 'name = command'")
    keys = _merge(auth_paths, lambda path: parse_auth(
        _read(path, directory, auth_file, owner, show(path), secret=True), show(path),
        warnings, allow_empty=True),
                  lambda digest: "[key %s]" % digest_fingerprint(digest), show)
    if not keys:
        warnings.append("%s: no keys defined; every request will be refused"
                        % (show(auth_paths[0]) if auth_paths else os.path.join(directory,
                                                                                AUTH_FILE)))
    warn_about_references(keys, clusters, AUTH_FILE, "any relays file", warnings)
    _check_shell_placeholders(clusters, Options(shell_exec=shell_exec))
    if not shell_exec:
        _warn_about_executables(clusters, warnings)
    _warn_about_working_dirs(clusters, warnings)
    warn_about_unguarded_arguments(clusters, Options(shell_exec=shell_exec), warnings)
    return Config(directory, keys, clusters, warnings,
                  [show(path) for path in relays_paths + auth_paths])


def placement(directory, shown_as, main_name, dropin_dir):
    """Where `configtest --as NAME` says the file checked will be installed: NAME is
    `main_name` or `dropin_dir`/NAME in `directory` (relative to it, or absolute).
    Returns (dropin, path): False for the main file, else the drop-in's name; and the
    path messages name the file by. Raises ConfigError."""
    shown = os.path.join(directory, shown_as)
    parent, name = os.path.split(os.path.normpath(shown))
    if parent == os.path.normpath(directory) and name == main_name:
        return False, shown
    if parent == os.path.normpath(os.path.join(directory, dropin_dir)) and is_dropin_name(
            name):
        return name, shown
    raise ConfigError("--as %s" % shown_as, "the file checked is installed as %s or as "
                      "%s/NAME%s (NAME not starting with '.') in %s; give one of those"
                      % (main_name, dropin_dir, DROPIN_SUFFIX, directory))


def is_dropin_name(name):
    """True for a file name read from a drop-in directory: it ends in '.conf' and does
    not start with '.' (so editors' and package managers' leftovers are not read)."""
    return name.endswith(DROPIN_SUFFIX) and not name.startswith(".")


def config_files(directory, main_name, dropin_name, replacement=None, dropin=False,
                 owner=None):
    """The files making up one part of the configuration, in the order they are read.

    The main file may be missing when the drop-in directory exists (and vice versa);
    with neither, the main file's path is returned so that reading it reports it missing.
    Listing the drop-in directory checks it and the config dir (see `ini.read_ini_file`);
    raises ConfigError.
    """
    main = os.path.join(directory, main_name)
    dropin_dir = os.path.join(directory, dropin_name)
    names = list_config_dir(directory, dropin_name, owner)
    if names is not None:
        names = [name for name in names if is_dropin_name(name)]
    dropins = [os.path.join(dropin_dir, name) for name in names or ()]
    if replacement is not None and dropin:
        # Checked as if installed in the drop-in directory, under the name `dropin` (or
        # its own): it replaces the file of that name, if any, in the reading order.
        name = dropin if isinstance(dropin, str) else os.path.basename(replacement)
        installed = os.path.join(dropin_dir, name)
        dropins = sorted([path for path in dropins if path != installed] + [installed])
        dropins[dropins.index(installed)] = replacement
    elif replacement is not None:
        main = replacement
    # A missing main file is reported, unless drop-ins stand in for it. (lexists: a link
    # there is read, and refused, not taken for a missing file.)
    main_needed = (os.path.lexists(main) or (replacement is not None and not dropin)
                   or (names is None and not (replacement is not None and dropin)))
    return ([main] if main_needed else []) + dropins


def _existing(paths, warnings):
    """`paths` less the ones that do not exist, each with a warning."""
    for path in paths:
        if not os.path.lexists(path):
            warnings.append("%s: not there (yet); checked without it" % path)
    return [path for path in paths if os.path.lexists(path)]


def _merge(paths, parse_file, describe, show):
    """Parses each file and merges the sections; a section in two files is an error.
    `show(path)` is how messages name a file."""
    merged = {}
    origin = {}
    for path in paths:
        for name, value in parse_file(path).items():
            if name in merged:
                raise ConfigError(show(path), "%s is already defined in %s"
                                  % (describe(name), show(origin[name])))
            merged[name] = value
            origin[name] = path
    return merged


def _read(path, directory, replacement, owner, shown, secret=False):
    """Reads one file safely; `replacement` (a file named on the command line) is checked
    on its own, every other file with the directories from `directory` down to it.
    Messages name it `shown`."""
    return read_ini_file(path, secret, owner, None if path == replacement else directory,
                         shown)


# ---------------------------------------------------------------------------------------
# relays.conf

def parse_relays(parser, path, allow_empty=False):
    """Returns {cluster: {name: Command}} from a parsed relays.conf; raises ConfigError.

    A file defining no cluster is an error unless `allow_empty` (one of several files).
    """
    clusters = {}
    for cluster in parser.sections():
        _check_name(cluster, path, cluster, None, "cluster")
        commands = {}
        settings = []
        for name, line in parser.items(cluster):
            _check_name(name, path, cluster, name, "command")
            if "." in name:
                settings.append((name, line))
                continue
            argv = split_command_line(line, path, cluster, name)
            try:
                template = template_for(line, argv)
            except ValueError as error:
                raise ConfigError(path, str(error), cluster, name)
            commands[name] = Command(cluster, name, line, argv, path=path,
                                     template=template)
        for option, value in settings:
            _apply_setting(commands, option, value, path, cluster)
        for name, command in commands.items():
            try:
                command.policy.validate()
            except ValueError as error:
                raise ConfigError(path, str(error), cluster, name)
        clusters[cluster] = commands
    if not clusters and not allow_empty:
        raise ConfigError(path, "no clusters defined; add a section such as [default] "
                          "with a line 'name = command'")
    return clusters


def _apply_setting(commands, option, value, path, cluster):
    """Applies `NAME.SETTING = value` to the command NAME; raises ConfigError."""
    name, setting = option.split(".", 1)
    if name not in commands:
        raise ConfigError(path, "setting for command %r, which this section does not "
                          "define (command names may not contain '.')" % name,
                          cluster, option)
    if setting not in SETTINGS:
        raise ConfigError(path, "unknown setting %r (expected one of: %s)"
                          % (setting, ", ".join(SETTINGS)), cluster, option)
    try:
        commands[name].policy.set(setting, value)
    except ValueError as error:
        raise ConfigError(path, str(error), cluster, option)


def split_command_line(line, path, cluster, name):
    """Returns the argv of a configured command line; raises ConfigError."""
    try:
        argv = shlex.split(line)
    except ValueError as error:
        raise ConfigError(path, str(error), cluster, name)
    if not argv:
        raise ConfigError(path, "empty command", cluster, name)
    if not argv[0]:
        raise ConfigError(path, "the program name (the first word) is empty", cluster, name)
    return argv


def _check_name(value, path, section, option, what):
    if "::" in value:
        raise ConfigError(path, "'::' is not allowed in a %s name (it separates cluster "
                          "and command)" % what, section, option)
    if value != value.strip() or not value:
        raise ConfigError(path, "a %s name may not be empty or start or end with white "
                          "space" % what, section, option)


def _check_shell_placeholders(clusters, options):
    """Raises ConfigError for a placeholder that a shell would not read as one word."""
    for cluster in sorted(clusters):
        for name, command in sorted(clusters[cluster].items()):
            if command.template is None or not command.policy.effective("shell", options)[0]:
                continue
            try:
                command.template.check_shell()
            except ValueError as error:
                raise ConfigError(command.path, str(error), cluster, name)


def _warn_about_executables(clusters, warnings):
    for cluster in sorted(clusters):
        for name, command in sorted(clusters[cluster].items()):
            path = command.path
            program = command.argv[0]
            if os.sep in program:
                found = os.path.isfile(program) and os.access(program, os.X_OK)
            else:
                found = shutil.which(program) is not None
            if not found:
                warnings.append("%s: [%s] %s: %r is not an executable file%s" % (
                    path, cluster, name, program,
                    "" if os.sep in program else " on PATH"))


def _warn_about_working_dirs(clusters, warnings):
    """Warns about each `cwd` that is not a directory now: every request would fail."""
    for cluster in sorted(clusters):
        for name, command in sorted(clusters[cluster].items()):
            cwd = command.policy.cwd
            if cwd is None or os.path.isdir(cwd):
                continue
            warnings.append("%s: [%s] %s.cwd: %r %s; create it or fix the path (each "
                            "request would fail with code %d)" % (
                                command.path, cluster, name, cwd,
                                "is not a directory" if os.path.exists(cwd)
                                else "does not exist", _CWD_FAILURE_CODE))
