"""Reading the configuration's files: opening them safely, the INI rules they share, and
the one exception for what is wrong in them.

Every file is opened without following a symbolic link and checked through the descriptor
that is then read (never `stat` by name, then `open` by name): a regular file, owned by root
or the server's user, not writable by group or others; an auth file (`secret`) owned by the
server's user with no access at all for group or others. The config dir and its drop-in
directories get the same owner and write check, like sshd's StrictModes.

INI rules: no interpolation, '=' as the only separator, case-sensitive names, duplicates
refused, no [DEFAULT], no continuation lines. A `ConfigError`'s text names the file (and
section and option) and says how to fix the problem.
"""

import configparser
import os
import re
import stat

from .fingerprint import hide_key
from .reasons import reason

# ConfigParser treats its default section specially (its options leak into every other
# section). A name nobody can type keeps [DEFAULT] an ordinary section we can refuse.
_NO_DEFAULT_SECTION = "\x00no default section"
COMMENT_PREFIXES = ("#", ";")

# O_NONBLOCK: a FIFO put in place of a file must not hang the server in open(); it is then
# refused by its type. O_NOCTTY: nor may a terminal become ours.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY

# What is opened, for the rules and the messages.
_CONFIG_DIR = "the config dir"
_DROPIN_DIR = "a drop-in directory"
_FILE = "a config file"
_SECRET_FILE = "an auth file"
_TYPES = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class ConfigError(Exception):
    """A configuration problem; str() is the one line the user sees after 'Config error: '."""

    def __init__(self, path, problem, section=None, option=None):
        place = path
        if section is not None:
            place += ": [%s]" % section
            if option is not None:
                place += " %s" % option
        Exception.__init__(self, "%s: %s" % (place, problem))


# ---------------------------------------------------------------------------------------
# Opening files and directories

def read_ini_file(path, secret=False, owner=None, config_dir=None, shown=None):
    """Opens `path` safely, checks it and parses it; returns the parser or raises ConfigError.

    `secret`: an auth file (stricter rule, and messages that never quote it). `owner`: the
    uid the server runs as (default: this process' effective uid). `config_dir`: the config
    dir `path` was found in; each directory from it down to the file is checked too. Without
    it (a file named on the command line) only the file itself is. `shown`: how messages
    name the file (default: `path`).
    """
    kind = _SECRET_FILE if secret else _FILE
    parts = _parts_below(config_dir, path)
    shown = path if shown is None else shown
    try:
        if parts is None:
            fd = _open_checked(path, shown, kind, owner)
        else:
            fd = _open_below(config_dir, parts, kind, owner)
    except FileNotFoundError:
        raise ConfigError(shown, "file not found")
    try:
        handle = open(fd, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
    try:
        with handle:
            return read_ini(handle, shown, secret)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(shown, "cannot read: %s" % reason(error))


def list_config_dir(config_dir, name, owner=None):
    """The names in the directory `name` of `config_dir` (sorted), or None if there is none;
    both directories are checked like the files. Raises ConfigError."""
    path = os.path.join(config_dir, name)
    try:
        fd = _open_below(config_dir, [name], _DROPIN_DIR, owner)
    except FileNotFoundError:
        return None
    try:
        return sorted(os.listdir(fd))
    except OSError as error:
        raise ConfigError(path, "cannot list: %s" % reason(error))
    finally:
        os.close(fd)


def _parts_below(config_dir, path):
    """The names leading from `config_dir` to `path`, or None if it is not below it."""
    if config_dir is None:
        return None
    head = os.path.join(config_dir, "")
    if not path.startswith(head) or len(path) == len(head):
        return None
    return path[len(head):].split(os.sep)


def _open_below(config_dir, parts, kind, owner):
    """Opens `config_dir` (a link there is followed: the directory it leads to is checked),
    then each of `parts` in it without following links, checking each; returns the last
    descriptor. Raises ConfigError, or FileNotFoundError if a part is missing."""
    fd = _open_checked(config_dir, config_dir, _CONFIG_DIR, owner)
    try:
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            path = os.path.join(config_dir, *parts[:index + 1])
            opened = _open_checked(name, path, kind if last else _DROPIN_DIR, owner, fd)
            os.close(fd)
            fd = opened
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_checked(name, path, kind, owner, dir_fd=None):
    """Opens `name` (relative to `dir_fd`) as `kind` and checks the opened object; returns
    its descriptor. `path` is how messages name it. Raises ConfigError, or
    FileNotFoundError."""
    directory = kind in (_CONFIG_DIR, _DROPIN_DIR)
    flags = _DIR_FLAGS if directory else _FILE_FLAGS
    if kind == _CONFIG_DIR:
        flags &= ~os.O_NOFOLLOW  # --config-dir may be a link to the real directory
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as error:
        # A link (ELOOP on Linux, EMLINK on FreeBSD), a socket (ENXIO), a file where a
        # directory should be (ENOTDIR): say what is there, whatever the errno.
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            info = None
        if info is not None:
            _check_type(info, path, kind)
        raise ConfigError(path, "cannot read: %s" % reason(error))
    try:
        info = os.fstat(fd)
        _check_type(info, path, kind)
        _check_owner_and_mode(info, path, kind, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_type(info, path, kind):
    """Refuses anything but a directory for a directory kind, a regular file for a file."""
    directory = kind in (_CONFIG_DIR, _DROPIN_DIR)
    if (stat.S_ISDIR if directory else stat.S_ISREG)(info.st_mode):
        return
    what = {_CONFIG_DIR: "the config dir", _DROPIN_DIR: "a drop-in directory"}.get(
        kind, "a config file")
    if stat.S_ISLNK(info.st_mode):
        real = "directory" if directory else "file"
        raise ConfigError(path, "is a symbolic link; %s must be a real %s (replace the link "
                          "with the %s it points to)" % (what, real, real))
    found = next((name for test, name in _TYPES if test(info.st_mode)), "not a file")
    raise ConfigError(path, "is %s; %s must be a %s"
                      % (found, what, "directory" if directory else "regular file"))


def _check_owner_and_mode(info, path, kind, owner):
    """Like sshd's StrictModes: what another user could change (or, for an auth file,
    read) is refused."""
    expected = os.geteuid() if owner is None else owner
    mode = stat.S_IMODE(info.st_mode)
    if kind == _SECRET_FILE:
        if info.st_uid != expected:
            raise ConfigError(path, "owned by uid %d, but uscmdrelay runs as uid %d; "
                              "chown it to that user and chmod 600 it"
                              % (info.st_uid, expected))
        if mode & 0o077:
            raise ConfigError(path, "mode %04o lets group or others access the keys; "
                              "run chmod 600 %s" % (mode, path))
        return
    if info.st_uid not in (0, expected):
        raise ConfigError(path, "owned by uid %d, but uscmdrelay runs as uid %d; "
                          "chown it to root%s" % (info.st_uid, expected,
                                                  "" if expected == 0 else
                                                  " or to that user"))
    if mode & 0o022:
        raise ConfigError(path, "writable by group or others (mode %04o); run chmod go-w %s"
                          % (mode, path))


# ---------------------------------------------------------------------------------------
# The INI rules

class IniParser(configparser.ConfigParser):
    """A ConfigParser with the rules the files share (no interpolation, '=' only, ...);
    `lines` maps (section, option) to the line the option is on, once `read_ini` read it."""

    def __init__(self):
        configparser.ConfigParser.__init__(
            self, interpolation=None, strict=True, delimiters=("=",),
            comment_prefixes=COMMENT_PREFIXES, inline_comment_prefixes=None,
            empty_lines_in_values=False, default_section=_NO_DEFAULT_SECTION)
        self.optionxform = str
        self.lines = {}


def new_parser():
    """An empty `IniParser`."""
    return IniParser()


def read_ini(handle, path, secret=False):
    """Parses an open file; returns the `IniParser` or raises ConfigError.

    With `secret` (auth.conf, whose section names are keys) messages name a section by its
    fingerprint and never quote a line or an option name, which may be a key typed without
    its brackets.
    """
    parser = new_parser()
    text = handle.read()
    continued = _scan(text, parser)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        # The first problem in the file is reported: an indented line before the error
        # configparser stopped at comes first.
        lineno = getattr(error, "lineno", None)
        if lineno is None and isinstance(error, configparser.ParsingError):
            lineno = error.errors[0][0]
        if continued is not None and (lineno is None or continued[0] < lineno):
            raise _continuation_error(path, continued, secret)
        raise _parse_error(error, lineno, text, path, secret)
    if continued is not None:
        raise _continuation_error(path, continued, secret)
    if parser.has_section("DEFAULT"):
        raise ConfigError(path, "a [DEFAULT] section is not supported "
                          "(the default cluster is spelled [default])", "DEFAULT")
    return parser


# configparser's option line with '=' as the only delimiter, and its "indented by".
_OPTION = re.compile(r"(?P<option>.*?)\s*=")
_NON_SPACE = re.compile(r"\S")


def _scan(text, parser):
    """Walks the lines the way ConfigParser reads them: records in `parser.lines` where
    each option is, and returns the first continuation line, a line indented deeper than
    the option line above it that ConfigParser would glue onto that option's value, as
    (line number, section, option); None if there is none."""
    section = option = None
    indent_level = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        value = line.strip()
        if not value or value.startswith(COMMENT_PREFIXES):
            option = None  # a blank line or a comment (indented or not) ends a value
            continue
        indent = _NON_SPACE.search(line).start()
        if option is not None and indent > indent_level:
            return lineno, section, option
        indent_level = indent
        header = parser.SECTCRE.match(value)
        if header is not None:
            section, option = header.group("header"), None
        elif section is not None:
            match = _OPTION.match(value)
            option = match.group("option").rstrip() if match is not None else None
            if option:
                parser.lines.setdefault((section, option), lineno)
    return None


def _continuation_error(path, continued, secret):
    lineno, section, option = continued
    return ConfigError(path, "line %d: this indented line would be joined to the value "
                       "above; remove the leading white space (values are one line)"
                       % lineno, _section_name(section, secret), None if secret else option)


def _parse_error(error, lineno, text, path, secret):
    """The ConfigError for what configparser refused, at line `lineno`."""
    if isinstance(error, configparser.DuplicateSectionError):
        return ConfigError(path, "line %s: section [%s] is defined twice"
                           % (lineno, _section_name(error.section, secret)))
    if isinstance(error, configparser.DuplicateOptionError):
        return ConfigError(path, "line %s: option is defined twice" % lineno,
                           _section_name(error.section, secret),
                           None if secret else error.option)
    if isinstance(error, configparser.MissingSectionHeaderError):
        return ConfigError(path, "line %s: %s is outside any [section]"
                           % (lineno, _quote_line(error.line, secret)))
    if isinstance(error, configparser.ParsingError):
        # Python < 3.13 keeps repr(line) in .errors, 3.13 the line itself: so the line is
        # taken from the text, for the same message on every version.
        return ConfigError(path, "line %s: %s is not 'name = value'"
                           % (lineno, _quote_line(text.split("\n")[lineno - 1], secret)))
    return ConfigError(path, "cannot be read as INI (%s)" % type(error).__name__ if secret
                       else reason(error))


def _section_name(section, secret):
    return hide_key(section) if secret else section


def _quote_line(line, secret):
    return "this line" if secret else repr(line.strip())
