"""Client arguments that could become options, or commands: the check that warns about
each configured command taking them unguarded.

GNU `date -f FILE` prints FILE's lines in its errors: with `date` in relays.conf and
auth.conf as FILE, a key holder read every key. A command that appends client arguments
needs a guard (no arguments, a pattern or a list of choices, or a `--` before them); in
a shell command line, a trailing operator or a comment turns an argument into a command
or swallows it. Sans-IO: it reads loaded commands and returns warnings.
"""


END_OF_OPTIONS = "--"
# Control operators after which an appended argument is a command of its own.
_SHELL_CONTROL_OPERATORS = ("&&", "||", "|", ";", "&")
# Redirection operators after which an appended argument is a file name.
_SHELL_REDIRECTIONS = (">>", "<<", ">&", "<&", "<>", ">|", ">", "<")
_SHELL_TWO_CHAR_OPERATORS = ("&&", "||", ";;") + _SHELL_REDIRECTIONS[:6]


def warn_about_unguarded_arguments(clusters, options, warnings):
    """Warns about each command that accepts client arguments unguarded: one could be
    an option (GNU `date -f FILE` prints FILE's lines; with `date` in the relays file and
    auth.conf as FILE, every key) or, in a shell command line, a command or a file name.
    """
    for cluster in sorted(clusters):
        for name, command in sorted(clusters[cluster].items()):
            policy = command.policy
            if not policy.accepts_arguments():
                continue
            shell = policy.effective("shell", options)[0]
            place = "%s: [%s] %s: " % (command.path, cluster, name)
            if command.template is not None:
                if not policy.limits_arguments():
                    _warn_about_placeholders(command.template.exposed(shell), place, name,
                                             warnings)
                continue
            if shell:
                words, operator, comment = scan_shell_line(command.line)
                if comment:
                    warnings.append(
                        place + "the shell command line holds a comment (a '#' outside "
                        "quotes starts one), which swallows the client arguments; set "
                        "%s.max_args = 0, or quote the '#'" % name)
                    continue
                if operator:
                    effect = ("runs as a command" if operator in _SHELL_CONTROL_OPERATORS
                              else "is the file name of a redirection")
                    warnings.append(
                        place + "the shell command line ends in %r, so the first client "
                        "argument %s; set %s.max_args = 0, or complete the command line"
                        % (operator, effect, name))
                    continue
            else:
                words = command.argv
            if policy.limits_arguments() or END_OF_OPTIONS in words[1:]:
                continue
            warnings.append(
                place + "client arguments are appended unguarded (an argument such as "
                "'-f FILE' becomes an option); set {0}.max_args = 0, or end the command "
                "line with '--' and set {0}.arg_pattern or {0}.arg_choices".format(name))


_PLACEHOLDER_RISKS = {
    "program": "is the program to run",
    "option": "starts a word with no '--' before it (an argument such as '-f FILE' "
              "becomes an option)",
    "script": "is part of the script a shell runs (an argument such as '; reboot' "
              "becomes a command)",
}


def _warn_about_placeholders(exposed, place, name, warnings):
    """A placeholder alone guards nothing: `rsync -a $ARG1$ /backup/` with the argument
    `--rsh=evil` is still an option. Warns about each one exposed that way."""
    for number, risk in exposed:
        warnings.append(
            place + "the client argument $ARG{1}$ {2}; set {0}.arg_pattern or "
            "{0}.arg_choices{3}".format(
                name, number, _PLACEHOLDER_RISKS[risk],
                ", or put '--' before it" if risk == "option" else ""))


def scan_shell_line(line):
    """Reads a command line as /bin/sh would, as far as appended arguments care.

    Returns (words, operator, comment): the words (unquoted) of the simple command the
    arguments are appended to, the operator the line ends in ('' if none), and whether
    a '#' starting a word outside quotes makes the rest of the line a comment.
    `$(...)`, backquotes and `${...}` are kept inside their word, unexamined.
    """
    words = []
    word = None  # the word being read, None between words
    last = ""  # the last token's operator, "" after a word
    index, end = 0, len(line)
    while index < end:
        char = line[index]
        if char in " \t\r\n":
            index += 1
            if word is not None:
                words.append(word)
                word = None
        elif char == "#" and word is None:
            return words, last, True
        elif char in "|&;<>()":
            if word is not None:
                words.append(word)
                word = None
            operator = line[index:index + 2]
            if operator not in _SHELL_TWO_CHAR_OPERATORS:
                operator = char
            index += len(operator)
            if operator not in _SHELL_REDIRECTIONS:
                words = []  # a new command starts after a control operator
            last = operator
        else:
            text, index = _shell_word_part(line, index)
            word = (word or "") + text
            last = ""
    if word is not None:
        words.append(word)
    return words, last, False


def _shell_word_part(line, index):
    """One piece of a word starting at `index`: returns (its text, unquoted, the index
    after it)."""
    char = line[index]
    if char == "\\":
        return line[index + 1:index + 2], index + 2
    if char == "'":
        close = line.find("'", index + 1)
        close = len(line) if close < 0 else close
        return line[index + 1:close], close + 1
    if char == '"':
        text = []
        index += 1
        while index < len(line) and line[index] != '"':
            if line[index] == "\\" and line[index + 1:index + 2] in ('"', "\\", "$", "`"):
                index += 1
            text.append(line[index])
            index += 1
        return "".join(text), index + 1
    if line.startswith(("$(", "${"), index) or char == "`":
        close = {"(": ")", "{": "}", "`": "`"}[line[index + 1] if char == "$" else char]
        opening = line[index + 1] if char == "$" else None
        depth, scan = 1, index + (2 if char == "$" else 1)
        while scan < len(line) and depth:
            if line[scan] == close:
                depth -= 1
            elif opening and line[scan] == opening:
                depth += 1
            scan += 1
        return line[index:scan], scan
    return char, index + 1
