"""Running the server from the command line: logging, configuration, TLS, the systemd
socket, signals, and the exit status of each way a start can fail.

`serve(args)` takes the parsed command line and returns the exit status: 0 after a
clean stop, 1 for a start-up failure, 2 for a configuration error.
"""

import logging
import os
import signal
import sys

from . import __version__, spawn, systemd
from .config import ConfigError, find_config_dir, load_config
from .exits import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP
from .options import Options
from .server import RelayServer, StartupError

log = logging.getLogger("uscmdrelay")

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FILE_MODE = 0o640


def serve(args):
    """Starts the server for the parsed command line; returns the exit status."""
    # First of all: a SIGHUP or SIGTERM that arrives while the configuration loads must
    # be kept for the server, not end the process (their default action).
    signals = _Signals()
    signals.install()
    try:
        _setup_logging(args.log, args.log_level)
    except OSError as error:
        print("uscmdrelay: cannot open log file %s: %s" % (args.log, error.strerror),
              file=sys.stderr)
        return EXIT_STARTUP
    try:
        # The directory is settled once: a reload rereads the same files.
        directory = args.config_dir or find_config_dir()
        config = load_config(directory, shell_exec=args.shell_exec)
    except ConfigError as error:
        _fail("Config error: %s" % error, args.log)
        return EXIT_CONFIG
    for warning in config.warnings:
        log.warning("config: %s", warning)
    options = Options.from_args(args)
    try:
        tls_context = _tls_context(args)
    except ValueError as error:
        _fail("Config error: %s" % error, args.log)
        return EXIT_CONFIG
    try:
        listeners = systemd.listen_sockets()
    except ValueError as error:
        _fail("uscmdrelay: cannot use the socket passed by systemd: %s" % error, args.log)
        return EXIT_STARTUP
    if listeners:
        log.info("using %d listening socket(s) passed by systemd; --host and --port are "
                 "ignored", len(listeners))
    # From here on no command can inherit a descriptor we were started with (the systemd
    # sockets included); commands may now start with posix_spawn.
    spawn.seal_descriptors()
    metrics = None
    if options.metrics_file:
        from .metrics_file import metrics_file
        metrics = metrics_file(options.metrics_file, config)
    try:
        # SIGHUP reloads the TLS files too (a renewed certificate needs no restart).
        server = RelayServer(config, options, listeners=listeners,
                             loader=lambda: load_config(directory, args.shell_exec),
                             tls_context=tls_context, metrics=metrics,
                             tls_loader=None if tls_context is None
                             else lambda: _tls_context(args))
    except StartupError as error:
        _fail("uscmdrelay: %s" % error, args.log)
        return EXIT_STARTUP
    try:
        signals.attach(server)
        for host, port in server.addresses:
            log.info("uscmdrelay %s listening on %s port %s%s (config %s: %d keys, "
                     "%d clusters, %d commands)", __version__, host, port,
                     "" if tls_context is None else
                     " with mutual TLS" if args.tls_client_ca else " with TLS",
                     config.directory, len(config.keys), len(config.clusters),
                     config.command_count)
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK


def _tls_context(args):
    """The server's SSLContext, or None without --tls-cert; raises ValueError."""
    if not args.tls_cert:
        if args.tls_key or args.tls_client_ca:
            raise ValueError("--tls-key and --tls-client-ca need --tls-cert")
        return None
    from .tls import TLSError, server_context
    try:
        return server_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    except TLSError as error:
        raise ValueError(str(error))


def _fail(message, log_file):
    """Reports a start-up failure on stderr, and in the log file when there is one."""
    print(message, file=sys.stderr)
    if log_file:
        log.error("%s", message)


def _setup_logging(log_file, level):
    if log_file:
        # Reopened when logrotate has moved the file; created 0640 (less if the umask
        # says so): it holds client addresses and arguments.
        handler = _log_file_handler(log_file)
        formatter = logging.Formatter(LOG_FORMAT)
    else:
        handler = logging.StreamHandler(sys.stderr)
        # The journal timestamps each line itself and reads a <N> priority prefix.
        formatter = (systemd.JournalFormatter("%(message)s") if systemd.stderr_is_journal()
                     else logging.Formatter(LOG_FORMAT))
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _log_file_handler(path):
    """A WatchedFileHandler for `path` whose every open, the first and each one after a
    rotation, creates a missing file with LOG_FILE_MODE (masked by the umask); an
    existing file keeps its mode. Raises OSError."""
    from logging.handlers import WatchedFileHandler

    class _LogFileHandler(WatchedFileHandler):
        def _open(self):
            fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_CLOEXEC, LOG_FILE_MODE)
            try:
                return open(fd, "a", encoding=self.encoding,
                            errors=getattr(self, "errors", None))
            except BaseException:
                os.close(fd)
                raise

    return _LogFileHandler(path)


class _Signals(object):
    """SIGTERM and SIGINT stop the server, SIGHUP reloads it.

    The handlers only record the signal and ask the loop to act (gunicorn's arbiter).
    They are installed before anything else, and a signal that comes before the server
    exists is kept and handed to it by `attach`.
    """

    def __init__(self):
        self.server = None
        self.stop_requested = False
        self.reload_requested = False

    def install(self):
        """Installs the handlers and undoes what the parent may have left us: signal
        dispositions set to SIG_IGN and the signal mask survive exec."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_stop)
        signal.signal(signal.SIGHUP, self.handle_reload)
        # An ignored SIGCHLD makes the kernel reap our commands itself: waitpid() fails
        # with ECHILD and no command could ever finish.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _reset_ignored_signals()
        # A blocked SIGTERM would never stop us. Unblocked after the handlers are in,
        # so a signal pending meanwhile reaches them.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

    def attach(self, server):
        """From now on the signals go to `server`, with any that came before."""
        self.server = server
        if self.reload_requested:
            server.reload()
        if self.stop_requested:
            server.shutdown()

    def handle_stop(self, signum, frame):
        self.stop_requested = True
        if self.server is not None:
            self.server.shutdown()

    def handle_reload(self, signum, frame):
        self.reload_requested = True
        if self.server is not None:
            self.server.reload()


def _reset_ignored_signals():
    """Resets to its default every signal our parent left ignored (daemon(7)): SIG_IGN
    survives exec, so each command we start would inherit it too, whether posix_spawn or
    Popen starts it. Those Python ignores itself (SIGPIPE, SIGXFSZ) stay ignored here;
    `spawn` resets them in each command."""
    for signum in _ignored_signals():
        if signum not in spawn.DEFAULT_SIGNALS:
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError, RuntimeError):
                pass  # not a signal this system lets us handle


def _ignored_signals():
    """The numbers of the signals this process ignores: /proc/self/status says (PyPy's
    getsignal() does not see a disposition inherited at exec), else getsignal()."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("SigIgn:"):
                    mask = int(line.split()[1], 16)
                    return [signum for signum in range(1, signal.NSIG)
                            if mask & (1 << (signum - 1))]
    except (OSError, ValueError, IndexError):
        pass
    ignored = []
    for signum in range(1, signal.NSIG):
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                ignored.append(signum)
        except (OSError, ValueError):
            pass
    return ignored
