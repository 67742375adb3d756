"""Per-command policy: the `NAME.SETTING = value` lines of relays.conf, and the argument
rules they set.

Sans-IO. The converters turn a setting's text into a value or raise ValueError with a
message naming the bad value; config adds the file, section and option. `Policy.check`
raises the RelayError(2007) a request gets for arguments the policy does not allow.
"""

import os
import re

from .codes import ARGUMENTS_NOT_ALLOWED, RelayError
from .options import MAX_OUTPUT_BYTES, MAX_SECONDS

QUOTED_ARGUMENT_CHARS = 60


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or value != value or value < 0:
        raise ValueError("%r is not a number of seconds (0 for no limit)" % text)
    if value > MAX_SECONDS:
        raise ValueError("%r is out of range (0 to %d seconds; 0 for no limit)"
                         % (text, MAX_SECONDS))
    return value


def _count(minimum):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise ValueError("%r is not a whole number" % text)
        if value < minimum:
            raise ValueError("%r is less than %d" % (text, minimum))
        return value
    return convert


def _bytes(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_OUTPUT_BYTES:
        raise ValueError("%r is not a number of bytes from 0 to %d (1 GiB)"
                         % (text, MAX_OUTPUT_BYTES))
    return value


def _regex(text):
    try:
        return re.compile(text)
    except re.error as error:
        raise ValueError("%r is not a valid regular expression: %s" % (text, error))


def _words(text):
    words = text.split()
    if not words:
        raise ValueError("no words given; list the allowed arguments separated by spaces")
    return tuple(words)


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def _yes_no(text):
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError("%r is not yes or no" % text)


def _absolute_path(text):
    if not os.path.isabs(text):
        raise ValueError("%r is not an absolute path" % text)
    return text


def _text(text):
    return text.strip()


# setting -> converter. The order is the order configtest --list shows them in.
CONVERTERS = (
    ("description", _text),
    ("timeout", _seconds),
    ("min_args", _count(0)),
    ("max_args", _count(0)),
    ("arg_pattern", _regex),
    ("arg_choices", _words),
    ("max_running", _count(1)),
    ("shell", _yes_no),
    ("cwd", _absolute_path),
    ("max_output", _bytes),
)
SETTINGS = tuple(name for name, _ in CONVERTERS)
# The settings whose default is a server flag: setting -> (its options.Options name, flag).
INHERITED = {"timeout": ("timeout", "--timeout"), "shell": ("shell_exec", "--shell-exec"),
             "max_output": ("max_output", "--max-output")}
_CONVERTER = dict(CONVERTERS)


class Policy(object):
    """A command's settings; None where relays.conf does not set one. `placeholders`:
    the highest `$ARGn$` of its command line (0 without), the default of min_args and
    max_args."""

    __slots__ = SETTINGS + ("placeholders",)

    def __init__(self):
        for name in SETTINGS:
            setattr(self, name, None)
        self.placeholders = 0

    def set(self, setting, text):
        """Sets `setting` from its text; raises KeyError (unknown) or ValueError (bad)."""
        setattr(self, setting, _CONVERTER[setting](text))

    def validate(self):
        """Raises ValueError for settings that contradict each other."""
        if self.placeholders and self.max_args is not None \
                and self.max_args > self.placeholders:
            raise ValueError("max_args (%d) is more than the highest placeholder, $ARG%d$: "
                             "a command with placeholders takes no other arguments"
                             % (self.max_args, self.placeholders))
        low, high = self.argument_limits()
        if low is not None and high is not None and low > high:
            raise ValueError("min_args (%d) is greater than max_args (%d%s)" % (
                low, high, "" if self.max_args is not None
                else ", from the highest placeholder $ARG%d$" % high))

    def argument_limits(self):
        """(min_args, max_args) in force: the settings, else the highest placeholder
        for a command that has some; None for no limit."""
        low, high = self.min_args, self.max_args
        if self.placeholders:
            low = self.placeholders if low is None else low
            high = self.placeholders if high is None else high
        return low, high

    def effective(self, setting, options):
        """Returns (value, flag): the value of `setting` in force under the server's
        `options` (an options.Options, or the parsed command line), and the flag it
        comes from, or None when relays.conf sets it (or no flag stands behind it)."""
        value = getattr(self, setting)
        if value is None and self.placeholders and setting in ("min_args", "max_args"):
            return self.placeholders, "$ARG%d$" % self.placeholders
        if value is not None or setting not in INHERITED:
            return value, None
        name, flag = INHERITED[setting]
        return getattr(options, name), flag

    def accepts_arguments(self):
        """True unless `max_args = 0`: client arguments can reach the command line."""
        return self.max_args != 0

    def limits_arguments(self):
        """True when the policy alone keeps a client argument from being an arbitrary
        word (so not an option either): none are accepted, or each must match
        `arg_pattern` or be one of `arg_choices`."""
        return (not self.accepts_arguments() or self.arg_pattern is not None
                or self.arg_choices is not None)

    def check(self, arguments):
        """Raises RelayError(2007) unless the policy allows `arguments`."""
        count = len(arguments)
        low, high = self.argument_limits()
        if low is not None and count < low:
            _refuse("takes at least %d argument%s, got %d" % (low, _plural(low), count))
        if high is not None and count > high:
            _refuse("takes at most %d argument%s, got %d" % (high, _plural(high), count))
        for position, argument in enumerate(arguments, 1):
            if self.arg_pattern is not None and not self.arg_pattern.fullmatch(argument):
                _refuse("argument %d (%s) does not match arg_pattern"
                        % (position, _quote(argument)))
            if self.arg_choices is not None and argument not in self.arg_choices:
                _refuse("argument %d (%s) is not one of: %s"
                        % (position, _quote(argument), " ".join(self.arg_choices)))


def _refuse(reason):
    raise RelayError(ARGUMENTS_NOT_ALLOWED,
                     "arguments not allowed by this command's policy: " + reason)


def _plural(count):
    return "" if count == 1 else "s"


def _quote(argument):
    if len(argument) > QUOTED_ARGUMENT_CHARS:
        argument = argument[:QUOTED_ARGUMENT_CHARS] + "..."
    return repr(argument)
