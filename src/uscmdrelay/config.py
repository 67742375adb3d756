"""Finding, loading and validating the configuration: auth.conf and relays.conf.

Everything a user can get wrong in these files becomes a `ConfigError` whose text names the
file, the section and the option, and says how to fix it; it is what `configtest` prints and
what stops the server from starting. This module only reads files: it runs nothing.
"""

import configparser
import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import stat

from .policy import SETTINGS, Policy

AUTH_FILE = "auth.conf"
RELAYS_FILE = "relays.conf"
AUTH_DROPIN_DIR = "auth.d"
RELAYS_DROPIN_DIR = "relays.d"
DROPIN_SUFFIX = ".conf"
SEARCH_PATH = ("/etc/uscmdrelay", "/etc/opt/uscmdrelay", "~/.config/uscmdrelay")

ALL_CLUSTERS = "*"
AUTH_OPTIONS = ("auth_clusters", "description", "allowed_hosts")
HASHED_KEY_PREFIX = "sha256:"
_HASHED_KEY = re.compile(r"sha256:([0-9a-f]{64})\Z")
WEAK_KEY_CHARS = 16

# ConfigParser treats its default section specially (its options leak into every other
# section). A name nobody can type keeps [DEFAULT] an ordinary section we can refuse.
_NO_DEFAULT_SECTION = "\x00no default section"


class ConfigError(Exception):
    """A configuration problem; str() is the one line the user sees after 'Config error: '."""

    def __init__(self, path, problem, section=None, option=None):
        place = path
        if section is not None:
            place += ": [%s]" % section
            if option is not None:
                place += " %s" % option
        Exception.__init__(self, "%s: %s" % (place, problem))


class Command(object):
    """One relay: `argv` (the configured command split with shlex), its source `line`
    and its `policy` (the NAME.SETTING lines of its section)."""

    __slots__ = ("cluster", "name", "line", "argv", "policy", "path")

    def __init__(self, cluster, name, line, argv, policy=None, path=None):
        self.cluster = cluster
        self.name = name
        self.line = line
        self.argv = argv
        self.policy = policy if policy is not None else Policy()
        self.path = path  # the file that defines it

    @property
    def full_name(self):
        return self.cluster + "::" + self.name


class KeyGrant(object):
    """What one auth key may do: `clusters` (a frozenset, or ALL_CLUSTERS), `networks`
    (the client addresses it may come from; None for any) and its log `label`."""

    __slots__ = ("label", "clusters", "networks", "section", "path")

    def __init__(self, label, clusters, networks=None, section=None, path=None):
        self.label = label
        self.clusters = clusters
        self.networks = networks
        self.section = section or label  # how messages name its section: never the key
        self.path = path  # the file that defines it

    def allows(self, cluster):
        return self.clusters == ALL_CLUSTERS or cluster in self.clusters

    def allows_address(self, address):
        """True if a client at `address` (text) may use this key."""
        if self.networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        # An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == network.version and ip in network
                   for network in self.networks)


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


def key_digest(key):
    """Returns the sha256 digest (bytes) under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_fingerprint(key):
    """A short name for a key with no description, safe to log: it does not reveal the key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


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
    raise ConfigError(
        "no configuration found",
        "none of %s holds %s or %s; create one (see samples/) or pass --config-dir DIR"
        % (", ".join(search_path), AUTH_FILE, RELAYS_FILE))


def load_config(directory, shell_exec=False, relays_file=None, auth_file=None,
                dropin=False):
    """Loads and validates the configuration in `directory`; returns a `Config`.

    That is auth.conf then auth.d/*.conf, and relays.conf then relays.d/*.conf (each in
    lexical order). `relays_file`/`auth_file` stand in for relays.conf/auth.conf, or with
    `dropin` (True, or the name it will be installed under) for a drop-in: how
    configtest checks a file before it is installed. Raises ConfigError.
    """
    warnings = []
    relays_paths = config_files(directory, RELAYS_FILE, RELAYS_DROPIN_DIR, relays_file,
                                dropin)
    auth_paths = config_files(directory, AUTH_FILE, AUTH_DROPIN_DIR, auth_file, dropin)
    if relays_file is not None or auth_file is not None:
        # Checking one new file before it is installed: the other part may not be
        # deployed yet (Ansible may write auth before relays or the other way round).
        if relays_file is None:
            relays_paths = _existing(relays_paths, warnings)
        if auth_file is None:
            auth_paths = _existing(auth_paths, warnings)
    clusters = _merge(relays_paths, lambda path: parse_relays(
        _read_ini(path), path, allow_empty=True), lambda cluster: "[%s]" % cluster)
    if not clusters and (relays_paths or relays_file is None and auth_file is None):
        raise ConfigError(relays_paths[0] if relays_paths else
                          os.path.join(directory, RELAYS_FILE),
                          "no clusters defined; add a section such as [default] "
                          "with a line 'name = command'")
    keys = _merge(auth_paths, lambda path: _parse_auth_file(path, warnings),
                  lambda digest: "[key sha256:%s]" % digest.hex()[:12])
    if not keys:
        warnings.append("%s: no keys defined; every request will be refused"
                        % (auth_paths[0] if auth_paths else os.path.join(directory,
                                                                          AUTH_FILE)))
    _warn_about_references(keys, clusters, AUTH_FILE, warnings)
    if not shell_exec:
        _warn_about_executables(clusters, warnings)
    return Config(directory, keys, clusters, warnings, relays_paths + auth_paths)


def config_files(directory, main_name, dropin_name, replacement=None, dropin=False):
    """The files making up one part of the configuration, in the order they are read.

    The main file may be missing when the drop-in directory exists (and vice versa);
    with neither, the main file's path is returned so that reading it reports it missing.
    """
    main = os.path.join(directory, main_name)
    dropin_dir = os.path.join(directory, dropin_name)
    try:
        names = sorted(name for name in os.listdir(dropin_dir)
                       if name.endswith(DROPIN_SUFFIX) and not name.startswith("."))
    except FileNotFoundError:
        names = None
    except OSError as error:
        raise ConfigError(dropin_dir, "cannot list: %s" % _reason(error))
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
    # A missing main file is reported, unless drop-ins stand in for it.
    main_needed = (os.path.exists(main) or (replacement is not None and not dropin)
                   or (names is None and not (replacement is not None and dropin)))
    return ([main] if main_needed else []) + dropins


def _existing(paths, warnings):
    """`paths` less the ones that do not exist, each with a warning."""
    for path in paths:
        if not os.path.exists(path):
            warnings.append("%s: not there (yet); checked without it" % path)
    return [path for path in paths if os.path.exists(path)]


def _merge(paths, parse_file, describe):
    """Parses each file and merges the sections; a section in two files is an error."""
    merged = {}
    origin = {}
    for path in paths:
        for name, value in parse_file(path).items():
            if name in merged:
                raise ConfigError(path, "%s is already defined in %s"
                                  % (describe(name), origin[name]))
            merged[name] = value
            origin[name] = path
    return merged


def _parse_auth_file(path, warnings):
    check_auth_file_mode(path)
    return parse_auth(_read_ini(path, secret=True), path, warnings, allow_empty=True)


# ---------------------------------------------------------------------------------------
# Reading INI

def new_parser():
    """A ConfigParser with the rules both files share (no interpolation, '=' only, ...)."""
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#", ";"),
        inline_comment_prefixes=None, empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION)
    parser.optionxform = str
    return parser


def _read_ini(path, secret=False):
    try:
        with open(path, encoding="utf-8") as handle:
            return read_ini(handle, path, secret)
    except FileNotFoundError:
        raise ConfigError(path, "file not found")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, "cannot read: %s" % _reason(error))


def read_ini(handle, path, secret=False):
    """Parses an open file; returns the ConfigParser or raises ConfigError.

    With `secret` (auth.conf, whose section names are keys) messages name a section by its
    fingerprint and never quote a line, which may be a key typed without its brackets.
    """
    parser = new_parser()
    text = handle.read()
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as error:
        raise ConfigError(path, "line %s: section [%s] is defined twice"
                          % (error.lineno, _section_name(error.section, secret)))
    except configparser.DuplicateOptionError as error:
        raise ConfigError(path, "line %s: option is defined twice" % error.lineno,
                          _section_name(error.section, secret), error.option)
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(path, "line %s: %s is outside any [section]"
                          % (error.lineno, _quote_line(error.line, secret)))
    except configparser.ParsingError as error:
        # Python < 3.13 keeps repr(line) in .errors, 3.13 the line itself: so the line is
        # taken from the text, for the same message on every version.
        lineno = error.errors[0][0]
        raise ConfigError(path, "line %s: %s is not 'name = value'"
                          % (lineno, _quote_line(text.split("\n")[lineno - 1], secret)))
    except configparser.Error as error:
        raise ConfigError(path, _reason(error))
    if parser.has_section("DEFAULT"):
        raise ConfigError(path, "a [DEFAULT] section is not supported "
                          "(the default cluster is spelled [default])", "DEFAULT")
    return parser


def _section_name(section, secret):
    return _hide(section) if secret else section


def _quote_line(line, secret):
    return "this line" if secret else repr(line.strip())


def _reason(error):
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


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
            commands[name] = Command(cluster, name, line, split_command_line(
                line, path, cluster, name), path=path)
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


# ---------------------------------------------------------------------------------------
# auth.conf

def check_auth_file_mode(path):
    """Refuses an auth.conf that another user could read or write, like sshd's StrictModes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(path, "file not found")
    except OSError as error:
        raise ConfigError(path, "cannot read: %s" % _reason(error))
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise ConfigError(path, "owned by uid %d, but uscmdrelay runs as uid %d; "
                          "chown it to that user and chmod 600 it"
                          % (info.st_uid, os.geteuid()))
    if mode & 0o077:
        raise ConfigError(path, "mode %04o lets group or others access the keys; "
                          "run chmod 600 %s" % (mode, path))


def parse_auth(parser, path, warnings, allow_empty=False):
    """Returns {sha256 digest: KeyGrant} from a parsed auth.conf; raises ConfigError.

    A section is a key, or `sha256:<64 hex digits>`, the digest of one (a hashed key).
    A file with no key gets a warning unless `allow_empty` (the caller checks the total).
    """
    keys = {}
    for key in parser.sections():
        name = _hide(key)
        if key != key.strip() or not key:
            raise ConfigError(path, "an auth key may not start or end with white space",
                              name)
        for option in parser.options(key):
            if option not in AUTH_OPTIONS:
                raise ConfigError(path, "unknown option (expected one of: %s)"
                                  % ", ".join(AUTH_OPTIONS), name, option)
        if not parser.has_option(key, "auth_clusters"):
            raise ConfigError(path, "missing; list the clusters this key may use, or '*' "
                              "for all", name, "auth_clusters")
        clusters = parse_cluster_list(parser.get(key, "auth_clusters"), path, name)
        networks = None
        if parser.has_option(key, "allowed_hosts"):
            networks = parse_networks(parser.get(key, "allowed_hosts"), path, name)
        digest = _section_digest(key, path, warnings)
        if digest in keys:
            raise ConfigError(path, "this key is defined twice (plain and hashed?)", name)
        description = parser.get(key, "description", fallback="").strip()
        keys[digest] = KeyGrant(description or name[len("key "):], clusters, networks, name,
                                path)
    if not keys and not allow_empty:
        warnings.append("%s: no keys defined; every request will be refused" % path)
    return keys


def _section_digest(key, path, warnings):
    """The digest a section stands for: its own for a hashed key, else the key's."""
    if key.startswith(HASHED_KEY_PREFIX):
        match = _HASHED_KEY.match(key)
        if match is None:
            raise ConfigError(path, "a hashed key is 'sha256:' and 64 lowercase hex digits "
                              "(uscmdrelay hash-key prints one)", _hide(key))
        return bytes.fromhex(match.group(1))
    if len(key) < WEAK_KEY_CHARS:
        warnings.append("%s: [%s] the key is shorter than %d characters; use a long "
                        "random key" % (path, _hide(key), WEAK_KEY_CHARS))
    return key_digest(key)


def parse_networks(value, path, section):
    """Returns a tuple of ip_network from `allowed_hosts`; raises ConfigError."""
    entries = value.replace(",", " ").split()
    if not entries:
        raise ConfigError(path, "empty; list addresses or networks (or remove the line to "
                          "allow any address)", section, "allowed_hosts")
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(path, "%r is not an IP address or network" % entry,
                              section, "allowed_hosts")
    return tuple(networks)


def parse_cluster_list(value, path, section):
    """Returns frozenset of cluster names, or ALL_CLUSTERS; raises ConfigError."""
    names = value.replace(",", " ").split()
    if not names:
        raise ConfigError(path, "empty; list the clusters this key may use, or '*' for all",
                          section, "auth_clusters")
    if ALL_CLUSTERS in names:
        if len(names) > 1:
            raise ConfigError(path, "'*' means all clusters and cannot be combined with "
                              "names", section, "auth_clusters")
        return ALL_CLUSTERS
    return frozenset(names)


def _hide(key):
    """How messages name a key's section: never the key, only a fingerprint of it (a
    hashed key's section is its own fingerprint already)."""
    match = _HASHED_KEY.match(key)
    if match is not None:
        return "key %s%s" % (HASHED_KEY_PREFIX, match.group(1)[:12])
    return "key %s" % key_fingerprint(key)


def _warn_about_references(keys, clusters, path, warnings):
    for grant in sorted(keys.values(), key=lambda grant: grant.section):
        if grant.clusters == ALL_CLUSTERS:
            continue
        for cluster in sorted(grant.clusters - set(clusters)):
            warnings.append("%s: [%s] auth_clusters: cluster %r is not defined in %s"
                            % (grant.path or path, grant.section, cluster, RELAYS_FILE))
