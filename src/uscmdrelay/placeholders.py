"""Argument placeholders in relays.conf: `$ARG1$` ... `$ARG9$`, and `$$` for one `$`.

A command line holding a placeholder is a template: the client's arguments go where the
placeholders are, never appended. Without a shell each placeholder is replaced inside its
own word of the split line (no re-splitting); with one, it is replaced by the argument
passed through `shlex.quote`, so it must stand outside quotes. Only `$$` and text
starting `$ARG` are special: `$HOME`, `${x}`, `$1` and `$(...)` stay as they are, and a
line without placeholders is used exactly as before (`$$` included). Sans-IO: it parses
and fills in text, and raises ValueError with the fix; config adds the place.
"""

import re
import shlex

MAX_PLACEHOLDER = 9
END_OF_OPTIONS = "--"
# `$$`, or `$ARG` and the word characters after it, and the `$` that closes it if any.
_TOKEN = re.compile(r"\$(?:(\$)|ARG(\w*)(\$)?)")
_SYNTAX = "placeholders are $ARG1$ to $ARG9$; write $$ for a literal $"
SHELLS = ("sh", "bash", "dash", "ksh", "mksh", "zsh", "busybox")
# Characters after which (white space aside) the shell starts a new command.
_COMMAND_STARTS = ";&|(`\n"


def parse(text):
    """Splits `text` into parts: strings (with `$$` read as `$`) and placeholder
    numbers (ints). Raises ValueError for a malformed placeholder."""
    return _scan(text)[0]


def _scan(text):
    """Returns (parts, {start: (end, number or None for `$$`)})."""
    parts = []
    spans = {}
    literal = []
    position = 0
    for match in _TOKEN.finditer(text):
        dollar, name, closed = match.groups()
        if dollar is None and closed is None:
            if name[:1].isdigit():
                raise ValueError("unclosed placeholder %r (%s)" % (match.group(0), _SYNTAX))
            continue  # `$ARGS`, `$ARGV`: a shell variable, not ours
        if dollar is None and not re.match(r"\A[1-%d]\Z" % MAX_PLACEHOLDER, name):
            raise ValueError("malformed placeholder %r (%s)" % (match.group(0), _SYNTAX))
        literal.append(text[position:match.start()])
        position = match.end()
        if dollar is not None:
            literal.append("$")
            spans[match.start()] = (match.end(), None)
            continue
        parts.extend(_joined(literal))
        literal = []
        number = int(name)
        parts.append(number)
        spans[match.start()] = (match.end(), number)
    literal.append(text[position:])
    parts.extend(_joined(literal))
    return parts, spans


def _joined(pieces):
    text = "".join(pieces)
    return [text] if text else []


class Template(object):
    """A configured command line with placeholders: `words` (the parts of each word of
    the split line, for argv mode), `parts` (of the whole line, for shell mode) and
    `highest`, the highest placeholder number (how many arguments it takes)."""

    __slots__ = ("line", "words", "parts", "highest")

    def __init__(self, line, words, parts):
        self.line = line
        self.words = words
        self.parts = parts
        self.highest = max(part for part in parts if isinstance(part, int))

    def numbers(self):
        """The placeholder numbers used, in order, without repeats."""
        return sorted(set(part for part in self.parts if isinstance(part, int)))

    def argv(self, arguments):
        """The argv with each placeholder replaced by its argument, inside its word."""
        return ["".join(_fill(part, arguments, str) for part in word)
                for word in self.words]

    def shell_line(self, arguments):
        """The shell command line with each placeholder replaced by its argument,
        shlex-quoted: one literal word whatever it holds."""
        return "".join(_fill(part, arguments, shlex.quote) for part in self.parts)

    def check_shell(self):
        """Raises ValueError unless every placeholder stands where shlex.quote makes
        its argument one literal word: outside quotes, not after a backslash, not in a
        comment."""
        _shell_places(self.line, complain=True)

    def exposed(self, shell):
        """[(number, 'program', 'option' or 'script')]: placeholders whose argument
        could be the program to run, an option (it starts a word with no `--` word
        before it), or part of the script of `sh -c` run without a shell of ours."""
        found = []
        for index, word in enumerate(self.words):
            if (not shell and index > 1 and self.words[index - 1] == ["-c"]
                    and _is_shell(self.words[0])):
                found.extend((part, "script") for part in word if isinstance(part, int))
                continue
            if not word or not isinstance(word[0], int):
                continue
            if index == 0:
                found.append((word[0], "program"))
            elif [END_OF_OPTIONS] not in self.words[1:index]:
                found.append((word[0], "option"))
        if shell:
            programs = set(number for number, place in _shell_places(self.line)
                           if place == "program")
            found = [(number, "program" if number in programs else place)
                     for number, place in found]
            found.extend((number, "program") for number in sorted(programs)
                         if number not in [entry[0] for entry in found])
        return found


def _is_shell(word):
    return len(word) == 1 and word[0].rsplit("/", 1)[-1] in SHELLS


def _fill(part, arguments, convert):
    if not isinstance(part, int):
        return part
    # A missing argument (only when min_args allows fewer) is the empty string.
    return convert(arguments[part - 1] if part <= len(arguments) else "")


def template_for(line, argv):
    """The Template of a command line (and of its shlex-split `argv`), or None when it
    holds no placeholder. Raises ValueError for a malformed placeholder, or when the
    line and its words disagree on the placeholders (a backslash or a quote between a
    `$` and `ARG`)."""
    parts = parse(line)
    words = [parse(word) for word in argv]
    in_line = [part for part in parts if isinstance(part, int)]
    in_words = [part for word in words for part in word if isinstance(part, int)]
    if in_line != in_words:
        raise ValueError("the placeholders read differently before and after the line "
                         "is split into words (a quote or backslash inside one); write "
                         "each placeholder as plain $ARGn$")
    return Template(line, words, parts) if in_line else None


def _shell_places(line, complain=False):
    """[(number, 'program' or 'word' or 'inside')] for each placeholder of a shell line,
    read as /bin/sh would; with `complain`, raises ValueError for one whose argument
    shlex.quote could not keep literal (inside quotes, escaped, in a comment)."""
    _, spans = _scan(line)
    places = []
    quote = None
    command_start = True  # only white space since the start or a control operator
    word_start = True
    index = 0
    while index < len(line):
        if index in spans:
            end, number = spans[index]
            if number is not None:
                if quote and complain:
                    raise ValueError(
                        "$ARG%d$ is inside %s quotes, where the quoting of its argument "
                        "would not hold; write it outside quotes (the argument is quoted "
                        "for you)" % (number, "single" if quote == "'" else "double"))
                places.append((number, "program" if command_start and word_start
                               else "word" if word_start else "inside"))
            index = end
            command_start = word_start = False
            continue
        char = line[index]
        if char == "\\" and quote != "'":
            after = spans.get(index + 1, (None, None))[1]
            if after is not None and complain:
                raise ValueError("$ARG%d$ follows a backslash, which would unquote its "
                                 "argument; remove the backslash" % after)
            index += 2
            command_start = word_start = False
            continue
        if quote is not None:
            if char == quote:
                quote = None
        elif char == "#" and word_start:
            rest = [number for start, (_, number) in spans.items()
                    if start > index and number is not None]
            if rest and complain:
                raise ValueError("$ARG%d$ is in a comment (after a '#' outside quotes); "
                                 "move it before the '#'" % min(rest))
            break
        elif char in _COMMAND_STARTS:
            command_start = word_start = True
        elif char in " \t<>":
            word_start = True  # after a redirection: a file name, not a command
            command_start = command_start and char not in "<>"
        else:
            if char in "'\"":
                quote = char
            command_start = word_start = False
        index += 1
    return places
