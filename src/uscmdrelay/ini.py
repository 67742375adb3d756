"""Reading the configuration's INI files, and the one exception for what is wrong in them.

Both files share the rules here: no interpolation, '=' as the only separator,
case-sensitive names, duplicates refused, no [DEFAULT]. A `ConfigError`'s text names the
file (and section and option) and says how to fix the problem.
"""

import configparser

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


def new_parser():
    """A ConfigParser with the rules both files share (no interpolation, '=' only, ...)."""
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#", ";"),
        inline_comment_prefixes=None, empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION)
    parser.optionxform = str
    return parser


def read_ini_file(path, secret=False):
    """Opens and parses `path`; returns the ConfigParser or raises ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return read_ini(handle, path, secret)
    except FileNotFoundError:
        raise ConfigError(path, "file not found")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, "cannot read: %s" % reason(error))


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
        raise ConfigError(path, reason(error))
    if parser.has_section("DEFAULT"):
        raise ConfigError(path, "a [DEFAULT] section is not supported "
                          "(the default cluster is spelled [default])", "DEFAULT")
    return parser


def _section_name(section, secret):
    if not secret:
        return section
    from .keys import hide_key  # keys imports this module: import when needed
    return hide_key(section)


def _quote_line(line, secret):
    return "this line" if secret else repr(line.strip())


def reason(error):
    """The one line of an exception worth showing a user."""
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
