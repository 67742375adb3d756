"""The command line: `uscmdrelay [options]` serves, `uscmdrelay configtest` checks.

`main(argv)` returns the exit status: 0 done, 1 a start-up failure (port in use, bad
host, unwritable log), 2 a configuration or usage error. Expected failures are one line
on stderr, never a traceback.
"""

import argparse
import logging
import logging.handlers
import shlex
import signal
import sys

from . import __version__
from .config import ConfigError, find_config_dir, load_config
from .init_config import InitError, default_config_dir, write_config
from .server import Options, RelayServer, StartupError

log = logging.getLogger("uscmdrelay")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_CONFIG = 2


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
    parser = argparse.ArgumentParser(
        prog="uscmdrelay",
        description="Run pre-configured commands for trusted clients over TCP.")
    parser.add_argument("--host", default="0.0.0.0",
                        help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=_number(int, 0, 65535, "a port number"), default=7777,
                        help="port to listen on (default: 7777)")
    parser.add_argument("--log", metavar="LOG_FILE",
                        help="append logs to this file instead of stderr "
                             "(reopened when logrotate moves it)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="INFO",
                        help="log level (default: INFO)")
    parser.add_argument("--shell-exec", action="store_true",
                        help="run commands with /bin/sh -c; client arguments are quoted")
    parser.add_argument("--version", action="version", version="uscmdrelay " + __version__)
    parser.add_argument("--config-dir", metavar="DIR",
                        help="directory holding auth.conf and relays.conf (default: the "
                             "first of /etc/uscmdrelay, /etc/opt/uscmdrelay, "
                             "~/.config/uscmdrelay that has one)")
    parser.add_argument("--timeout", metavar="S", type=_number(float, 0), default=60.0,
                        help="seconds a command may run, 0 for no limit (default: 60)")
    parser.add_argument("--max-output", metavar="BYTES", type=_number(int, 0, what="an "
                        "integer"), default=1048576,
                        help="bytes of stdout and of stderr kept per command "
                             "(default: 1048576)")
    parser.add_argument("--max-request", metavar="BYTES", type=_number(int, 1, what="an "
                        "integer"), default=65536,
                        help="largest request accepted, in bytes (default: 65536)")
    parser.add_argument("--request-timeout", metavar="S", type=_number(float, 0.001),
                        default=10.0,
                        help="seconds a client has to send its whole request "
                             "(default: 10)")
    parser.add_argument("--max-connections", metavar="N", type=_number(int, 1, what="an "
                        "integer"), default=256,
                        help="client connections open at once; more get code 3004 "
                             "(default: 256)")
    parser.add_argument("--shutdown-timeout", metavar="S", type=_number(float, 0),
                        default=30.0,
                        help="on SIGTERM, seconds requests in flight get to finish before "
                             "their commands are killed (default: 30)")
    commands = parser.add_subparsers(dest="subcommand", title="commands",
                                     metavar="{configtest,init}")
    configtest = commands.add_parser(
        "configtest", help="check the configuration and exit",
        description="Check auth.conf and relays.conf; exit 0 when valid, 2 when not.")
    _add_config_dir(configtest)
    init = commands.add_parser(
        "init", help="write a first configuration with a new random key",
        description="Create the config directory (0700), an auth.conf (0600) with one new "
                    "random key granted the default cluster, and a relays.conf with a few "
                    "harmless commands. Existing files are never overwritten.")
    _add_config_dir(init, "(default: %s)" % default_config_dir())
    return parser


def _add_config_dir(subparser, default_text=""):
    # SUPPRESS: without a value here, the subparser must not reset the value given
    # before the subcommand (`uscmdrelay --config-dir D configtest`).
    subparser.add_argument("--config-dir", metavar="DIR", default=argparse.SUPPRESS,
                           help="directory holding auth.conf and relays.conf " + default_text)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.subcommand == "configtest":
        return configtest(args)
    if args.subcommand == "init":
        return init(args)
    return serve(args)


def load(args):
    """Returns the Config for the command line's options; raises ConfigError."""
    directory = args.config_dir or find_config_dir()
    return load_config(directory, shell_exec=args.shell_exec)


def configtest(args):
    try:
        config = load(args)
    except ConfigError as error:
        print("Config error: %s" % error, file=sys.stderr)
        return EXIT_CONFIG
    print("Config OK")
    print("config dir: %s" % config.directory)
    print("keys: %d, clusters: %d, commands: %d"
          % (len(config.keys), len(config.clusters), config.command_count))
    for warning in config.warnings:
        print("warning: %s" % warning)
    return EXIT_OK


def init(args):
    directory = args.config_dir or default_config_dir()
    try:
        key, auth_path, relays_path = write_config(directory)
    except InitError as error:
        print("uscmdrelay: %s" % error, file=sys.stderr)
        return EXIT_STARTUP
    print("Created %s (mode 0600) and %s." % (auth_path, relays_path))
    print("Your auth key (keep it secret; it is also in %s):" % auth_path)
    print("    %s" % key)
    print("Start the server:")
    print("    uscmdrelay --config-dir %s --host 127.0.0.1" % shlex.quote(directory))
    print("Call it:")
    print("    echo '{\"auth_key\": \"%s\", \"command\": \"uptime\"}' | nc 127.0.0.1 7777 | jq"
          % key)
    return EXIT_OK


def serve(args):
    try:
        _setup_logging(args.log, args.log_level)
    except OSError as error:
        print("uscmdrelay: cannot open log file %s: %s" % (args.log, error.strerror),
              file=sys.stderr)
        return EXIT_STARTUP
    try:
        config = load(args)
    except ConfigError as error:
        _fail("Config error: %s" % error, args.log)
        return EXIT_CONFIG
    for warning in config.warnings:
        log.warning("config: %s", warning)
    options = Options(host=args.host, port=args.port, timeout=args.timeout,
                      max_output=args.max_output, max_request=args.max_request,
                      request_timeout=args.request_timeout,
                      max_connections=args.max_connections, shell_exec=args.shell_exec)
    try:
        server = RelayServer(config, options)
    except StartupError as error:
        _fail("uscmdrelay: %s" % error, args.log)
        return EXIT_STARTUP
    try:
        _install_signal_handlers(server)
        host, port = server.address
        log.info("uscmdrelay %s listening on %s port %d (config %s: %d keys, %d clusters, "
                 "%d commands)", __version__, host, port, config.directory,
                 len(config.keys), len(config.clusters), config.command_count)
        server.serve_forever()
        log.info("uscmdrelay stopped")
    finally:
        server.server_close()
    return EXIT_OK


def _fail(message, log_file):
    """Reports a start-up failure on stderr, and in the log file when there is one."""
    print(message, file=sys.stderr)
    if log_file:
        log.error("%s", message)


def _setup_logging(log_file, level):
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _install_signal_handlers(server):
    # The handlers only ask the loop to stop; the loop does the work (gunicorn's arbiter).
    def stop(signum, frame):
        server.shutdown()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
