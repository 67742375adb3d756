"""The command line: `uscmdrelay [options]` serves; `configtest`, `init`, `call` and
`hash-key` are subcommands.

`main(argv)` returns the exit status: 0 done, 1 a start-up failure (port in use, bad
host, unwritable log), 2 a configuration or usage error. Expected failures are one line
on stderr, never a traceback.
"""

import argparse
import shlex
import sys

from . import __version__
from .exits import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP, EXIT_USAGE

# Each subcommand imports what it needs when it runs: `--version`, `call` and `init` do
# not pay for the server's modules (start-up time matters for a client run by cron).

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line and no usage block (exit 2):
    `uscmdrelay: error: argument --port: '70000' is out of range (0 to 65535)`."""

    def error(self, message):
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))

    def _check_value(self, action, value):
        # The server takes no positional argument: any bare word is a subcommand, and a
        # mistyped one gets one line with the likely fix, not argparse's list.
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            import difflib
            close = difflib.get_close_matches(value, list(action.choices), 1)
            hint = ("did you mean %r?" % close[0] if close
                    else "commands: %s" % ", ".join(action.choices))
            self.exit(EXIT_USAGE, "%s: unknown command %r (%s)\nTry '%s --help'.\n"
                      % (self.prog, value, hint, self.prog))
        argparse.ArgumentParser._check_value(self, action, value)


def _number(convert, minimum, maximum=None, what="a number"):
    """An argparse type: `convert` the text and check it lies in [minimum, maximum]."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not %s" % (text, what))
        if value != value or value < minimum or (maximum is not None and value > maximum):
            bounds = ">= %s" % minimum if maximum is None else "%s to %s" % (minimum, maximum)
            raise argparse.ArgumentTypeError("%r is out of range (%s)" % (text, bounds))
        return value
    return parse


def build_parser():
    from .options import SERVER_OPTIONS
    # allow_abbrev=False: `call --tls` must reach the subcommand, not be taken for an
    # abbreviation of the server's --tls-cert.
    parser = _Parser(
        prog="uscmdrelay", allow_abbrev=False,
        description="Run pre-configured commands for trusted clients over TCP.")
    server_options = dict((option.name, option) for option in SERVER_OPTIONS)

    def add_server_options(*names):  # in the order --help has always shown them
        for name in names:
            _add_server_option(parser, server_options.pop(name))
    add_server_options("host", "port")
    parser.add_argument("--log", metavar="LOG_FILE",
                        help="append logs to this file instead of stderr "
                             "(reopened when logrotate moves it)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="INFO",
                        help="log level (default: INFO)")
    add_server_options("shell_exec")
    parser.add_argument("--version", action="version", version="uscmdrelay " + __version__)
    parser.add_argument("--config-dir", metavar="DIR",
                        help="directory holding auth.conf and relays.conf (default: the "
                             "first of /etc/uscmdrelay, /etc/opt/uscmdrelay, "
                             "~/.config/uscmdrelay that has one)")
    add_server_options("timeout", "max_output", "max_request", "request_timeout",
                       "max_connections", "max_connections_per_host")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="serve TLS only, with this certificate (PEM; may hold the key)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    parser.add_argument("--tls-client-ca", metavar="FILE",
                        help="require a client certificate signed by this CA (mutual TLS)")
    add_server_options(*server_options)  # --shutdown-timeout, and any added later
    commands = parser.add_subparsers(dest="subcommand", title="commands",
                                     metavar="{configtest,init,call,check,hash-key,"
                                             "import-nrpe}")
    configtest = commands.add_parser(
        "configtest", help="check the configuration and exit",
        description="Check auth.conf and relays.conf; exit 0 when valid, 2 when not.")
    _add_config_dir(configtest)
    configtest.add_argument("--list", action="store_true",
                            help="also print every command with its effective settings")
    configtest.add_argument("--relays", metavar="FILE",
                            help="check FILE as if it were the config dir's relays.conf "
                                 "(for Ansible's validate:)")
    configtest.add_argument("--auth", metavar="FILE",
                            help="check FILE as if it were the config dir's auth.conf")
    configtest.add_argument("--as", metavar="NAME", dest="shown_as",
                            help="with --relays/--auth: name FILE so in messages, as the "
                                 "path it will be installed at (relays.conf, "
                                 "relays.d/NAME.conf, ... in the config dir; a drop-in's "
                                 "path implies --dropin)")
    configtest.add_argument("--strict", action="store_true",
                            help="treat warnings as errors (exit 2); with --relays/--auth, "
                                 "the warnings about FILE")
    configtest.add_argument("--user", metavar="USER",
                            help="check that auth files belong to USER (name or uid), the "
                                 "user the server will run as (default: the current user)")
    configtest.add_argument("--dropin", metavar="NAME", nargs="?", const=True,
                            default=False,
                            help="with --relays/--auth: check FILE as the drop-in "
                                 "relays.d/NAME or auth.d/NAME (default NAME: FILE's own "
                                 "name), replacing the file of that name if there is one")
    init = commands.add_parser(
        "init", help="write a first configuration with a new random key",
        description="Create the config directory (0700), an auth.conf (0600) with one new "
                    "random key granted the default cluster, and a relays.conf with a few "
                    "harmless commands. Existing files are never overwritten.")
    _add_config_dir(init, "(default: /etc/uscmdrelay as root, else ~/.config/uscmdrelay)")
    init.add_argument("--hashed", action="store_true",
                      help="store only the key's sha256 hash in auth.conf")
    call = commands.add_parser(
        "call", allow_abbrev=False, help="run a command on a uscmdrelay server, like ssh host cmd",
        description="Run COMMAND on a uscmdrelay server and print its output. The key "
                    "comes from $USCMDRELAY_AUTH_KEY or --key-file. Exit status: the "
                    "command's (128+N if killed by signal N), or 255 for a relay error.")
    _add_call_arguments(call)
    # `check` reads its own words (check.run_check); this entry is for --help.
    commands.add_parser("check", add_help=False,
                        help="run a command as a Nagios/Icinga plugin (check_nrpe's options)")
    import_nrpe = commands.add_parser(
        "import-nrpe", help="print a relays.conf section converted from an nrpe.cfg",
        description="Read FILE (an nrpe.cfg, with its include= and include_dir= files) "
                    "and print its command[...] lines as a relays.conf section; what "
                    "cannot be carried over is listed in a comment at its top.")
    import_nrpe.add_argument("file", metavar="FILE", help="the nrpe.cfg to read")
    import_nrpe.add_argument("--cluster", default="default",
                             help="the section to print (default: default)")
    hash_key = commands.add_parser(
        "hash-key", help="print the auth.conf section header of a hashed key",
        description="Read a key from stdin (or generate one) and print the [sha256:...] "
                    "section header that stands for it in auth.conf.")
    hash_key.add_argument("--generate", action="store_true",
                          help="generate a new random key and print it once, on stderr")
    return parser


def _add_server_option(parser, option):
    """The flag of one of options.SERVER_OPTIONS: its type checks the allowed range."""
    if option.default is False:
        parser.add_argument(option.flag, action="store_true", help=option.help)
    elif option.kind is None:
        parser.add_argument(option.flag, default=option.default, metavar=option.metavar,
                            help=option.help if option.default is None else
                            "%s (default: %s)" % (option.help, option.default))
    else:
        parser.add_argument(option.flag, metavar=option.metavar, default=option.default,
                            type=_number(option.kind, option.minimum, option.maximum,
                                         option.what),
                            help="%s (default: %s)" % (option.help, _show(option.default)))


def _show(value):
    return "%g" % value if isinstance(value, float) else str(value)


def _add_call_arguments(parser):
    """`call`'s options; the client module itself is imported only when it runs."""
    from .client_options import add_key_and_tls_options
    from .options import MAX_PORT, MAX_SECONDS
    parser.add_argument("--host", default="127.0.0.1",
                        help="server name or address (default: 127.0.0.1)")
    parser.add_argument("--port", type=_number(int, 1, MAX_PORT, "a port number"),
                        default=7777, help="server port (default: 7777)")
    parser.add_argument("--timeout", type=_number(float, 0.001, MAX_SECONDS),
                        default=60.0, metavar="S",
                        help="seconds the whole call may take, at most %d (default: 60)"
                             % MAX_SECONDS)
    parser.add_argument("--json", action="store_true",
                        help="print each line as received (NDJSON: output events, then "
                             "the reply object)")
    parser.add_argument("--no-stream", action="store_true",
                        help="ask for one reply at the end instead of the output as it "
                             "comes")
    parser.add_argument("--list", action="store_true",
                        help="list the commands this key may run")
    add_key_and_tls_options(parser)
    parser.add_argument("command", nargs="?", metavar="COMMAND",
                        help="'name' or 'cluster::name'")
    # Only for --help: main() sets the arguments aside before argparse (split_argv).
    parser.add_argument("arguments", nargs="*", metavar="ARG",
                        help="passed to the command as they are, '--' and '-x' included")


def _add_config_dir(subparser, default_text=""):
    # SUPPRESS: without a value here, the subparser must not reset the value given
    # before the subcommand (`uscmdrelay --config-dir D configtest`).
    subparser.add_argument("--config-dir", metavar="DIR", default=argparse.SUPPRESS,
                           help="directory holding auth.conf and relays.conf " + default_text)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_words = _check_words(argv)
    if check_words is not None:
        from .check import run_check
        return run_check(check_words)
    remote_arguments = None
    if "call" in argv:
        # The remote command's words must reach it untouched, '--' included: set them
        # aside before argparse, which would take a '--' as its own.
        from .client import split_argv
        at = argv.index("call") + 1
        options, command, remote_arguments = split_argv(argv[at:])
        argv = argv[:at] + options + ([command] if command is not None else [])
    args = build_parser().parse_args(argv)
    if remote_arguments is not None:
        args.arguments = remote_arguments
    if args.subcommand == "configtest":
        return configtest(args)
    if args.subcommand == "init":
        return init(args)
    if args.subcommand == "call":
        from .client import run_call
        return run_call(args)
    if args.subcommand == "hash-key":
        return hash_key(args)
    if args.subcommand == "import-nrpe":
        from .nrpe import run_import
        return run_import(args.file, args.cluster)
    from .service import serve
    return serve(args)


def _check_words(argv):
    """The words after `check` when it is the subcommand (every word before it an
    option or an option's value), else None."""
    for index, word in enumerate(argv):
        if word == "check":
            return argv[index + 1:]
        if not word.startswith("-") and not (index and argv[index - 1].startswith("--")
                                             and "=" not in argv[index - 1]):
            return None
    return None


def configtest(args):
    from .config import (AUTH_DROPIN_DIR, AUTH_FILE, DROPIN_SUFFIX, RELAYS_DROPIN_DIR,
                         RELAYS_FILE, ConfigError, find_config_dir, is_dropin_name,
                         load_config, placement)
    if args.dropin and not (args.relays or args.auth):
        print("uscmdrelay: --dropin goes with --relays FILE or --auth FILE", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(args.dropin, str) and not is_dropin_name(args.dropin):
        print("uscmdrelay: --dropin %s: drop-in files are read only if their name ends in "
              "'%s' and does not start with '.'" % (args.dropin, DROPIN_SUFFIX),
              file=sys.stderr)
        return EXIT_CONFIG
    if args.shown_as is not None and (args.dropin or bool(args.relays) == bool(args.auth)):
        print("uscmdrelay: --as goes with one --relays FILE or --auth FILE, without "
              "--dropin (--as relays.d/NAME is the drop-in NAME)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        owner = _user_id(args.user)
        directory = args.config_dir or find_config_dir()
        dropin, shown = args.dropin, None
        if args.shown_as is not None:
            dropin, shown = (
                placement(directory, args.shown_as, RELAYS_FILE, RELAYS_DROPIN_DIR)
                if args.relays else
                placement(directory, args.shown_as, AUTH_FILE, AUTH_DROPIN_DIR))
        config = load_config(directory, shell_exec=args.shell_exec,
                             relays_file=args.relays, auth_file=args.auth, dropin=dropin,
                             owner=owner, shown_as=shown)
    except ConfigError as error:
        print("Config error: %s" % error, file=sys.stderr)
        return EXIT_CONFIG
    if args.strict:
        # Checking one file before it is installed, the rest may be mid-deployment
        # (relays not there yet): only what is wrong in that file fails it.
        checked = shown or args.relays or args.auth
        errors = [warning for warning in config.warnings
                  if checked is None or warning.startswith(checked + ": ")]
        if errors:
            for warning in errors:
                print("Config error: %s" % warning, file=sys.stderr)
            return EXIT_CONFIG
    print("Config OK")
    print("config dir: %s" % config.directory)
    print("files: %s" % ", ".join(config.files))
    print("keys: %d, clusters: %d, commands: %d"
          % (len(config.keys), len(config.clusters), config.command_count))
    for warning in config.warnings:
        print("warning: %s" % warning)
    if args.list:
        print()
        _print_commands(config, args)
    return EXIT_OK


def _user_id(user):
    """The uid for --user (a name or a number); None without it. Raises ConfigError."""
    if user is None:
        return None
    if user.isdigit():
        return int(user)
    import pwd
    from .config import ConfigError
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError("--user", "no such user %r" % user)


def _print_commands(config, args):
    """Prints each command with the settings in force, saying which come from flags."""
    from .policy import SETTINGS
    for cluster in sorted(config.clusters):
        for name, command in sorted(config.clusters[cluster].items()):
            policy = command.policy
            print("%s::%s = %s" % (cluster, name, command.line))
            if command.template is not None:  # what min_args/max_args default to
                print("    %-12s %s" % ("placeholders", " ".join(
                    "$ARG%d$" % number for number in command.template.numbers())))
            for setting in SETTINGS:
                value, flag = policy.effective(setting, args)
                text = _show_setting(value)
                print("    %-12s %s" % (setting, text if flag is None
                                        else "%s (%s)" % (text, flag)))


def _show_setting(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "%g" % value
    if isinstance(value, tuple):  # arg_choices
        return " ".join(value)
    return getattr(value, "pattern", value)  # arg_pattern is a compiled regex


def init(args):
    from .init_config import InitError, default_config_dir, write_config
    directory = args.config_dir or default_config_dir()
    try:
        key, auth_path, relays_path = write_config(directory, hashed=args.hashed)
    except InitError as error:
        print("uscmdrelay: %s" % error, file=sys.stderr)
        return EXIT_STARTUP
    print("Created %s (mode 0600) and %s." % (auth_path, relays_path))
    if args.hashed:
        print("Your auth key (keep it secret; auth.conf holds only its hash, so this is the "
              "one time it is shown):")
    else:
        print("Your auth key (keep it secret; it is also in %s):" % auth_path)
    print("    %s" % key)
    print("Start the server:")
    print("    uscmdrelay --config-dir %s --host 127.0.0.1" % shlex.quote(directory))
    print("Call it:")
    print("    echo '{\"auth_key\": \"%s\", \"command\": \"uptime\"}' | nc 127.0.0.1 7777 | jq"
          % key)
    return EXIT_OK


def hash_key(args):
    from .fingerprint import hashed_key_section
    from .init_config import generate_key
    if args.generate:
        key = generate_key()
        print("New key (shown once; give it to the client): %s" % key, file=sys.stderr)
    else:
        key = _read_key(sys.stdin)
        if not key:
            print("uscmdrelay: no key on stdin (or use --generate)", file=sys.stderr)
            return EXIT_CONFIG
    print("[%s]" % hashed_key_section(key))
    return EXIT_OK


def _read_key(stdin):
    """The key on the first line of `stdin`. At a terminal it is asked for (on stderr)
    and read with echo off, like a password: not left on the screen or in a recording."""
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    import termios
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO  # the local flags
    # Echo off before the prompt: a key typed as soon as it shows is not echoed either.
    termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
    try:
        sys.stderr.write("Key (not echoed): ")
        sys.stderr.flush()
        line = stdin.readline()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stderr.write("\n")
    return line.rstrip("\r\n")
