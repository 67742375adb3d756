"""The server's options: each one's default and allowed range, written once.

The command line builds its flags from `SERVER_OPTIONS`, and `Options` takes its defaults
from the same table, so a default or a bound cannot differ between the two. relays.conf's
`NAME.timeout` shares `MAX_SECONDS`. This module only describes: it imports nothing.
"""

# The longest duration any setting or flag takes (a command's timeout, --timeout,
# --request-timeout, --shutdown-timeout, call --timeout): 7 days, room for the longest
# backup. Without a bound, a 30-day value made epoll.poll() raise OverflowError and end
# the server (issue 12).
MAX_SECONDS = 7 * 24 * 3600
MAX_OUTPUT_BYTES = 1024 * 1024 * 1024
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 65536
MAX_PORT = 65535


class ServerOption(object):
    """One server option: its `name` (the flag is --name with '-' for '_'), `default`,
    and for a number its `kind` (int or float), `minimum`, `maximum`, `metavar`, and
    what the value is called in an error (`what`); `help` is the flag's help text,
    without the default, which is added from `default`."""

    __slots__ = ("name", "default", "kind", "minimum", "maximum", "metavar", "what",
                 "help")

    def __init__(self, name, default, help, kind=None, minimum=None, maximum=None,
                 metavar=None, what="a number"):
        self.name = name
        self.default = default
        self.help = help
        self.kind = kind
        self.minimum = minimum
        self.maximum = maximum
        self.metavar = metavar
        self.what = what

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


SERVER_OPTIONS = (
    ServerOption("host", "0.0.0.0", "address to listen on"),
    ServerOption("port", 7777, "port to listen on", int, 0, MAX_PORT, None, "a port number"),
    ServerOption("shell_exec", False,
                 "run commands with /bin/sh -c; client arguments are quoted"),
    ServerOption("timeout", 60.0, "seconds a command may run, 0 for no limit, at most %d "
                 "(7 days)" % MAX_SECONDS, float, 0, MAX_SECONDS, "S"),
    ServerOption("max_output", 1048576, "bytes of stdout and of stderr kept per command, "
                 "at most %d (1 GiB)" % MAX_OUTPUT_BYTES, int, 0, MAX_OUTPUT_BYTES, "BYTES",
                 "an integer"),
    ServerOption("max_request", 65536, "largest request accepted, in bytes, at most %d "
                 "(16 MiB)" % MAX_REQUEST_BYTES, int, 1, MAX_REQUEST_BYTES, "BYTES",
                 "an integer"),
    ServerOption("request_timeout", 10.0, "seconds a client has to send its whole "
                 "request, at most %d" % MAX_SECONDS, float, 0.001, MAX_SECONDS, "S"),
    ServerOption("max_connections", 256, "client connections open at once, at most %d; "
                 "more get code 3004" % MAX_CONNECTIONS, int, 1, MAX_CONNECTIONS, "N",
                 "an integer"),
    ServerOption("max_connections_per_host", 32, "client connections open at once from "
                 "one address, 0 for no limit; more get code 3004", int, 0, MAX_CONNECTIONS,
                 "N", "an integer"),
    ServerOption("shutdown_timeout", 30.0, "on SIGTERM, seconds requests in flight get to "
                 "finish before their commands are killed, at most %d" % MAX_SECONDS,
                 float, 0, MAX_SECONDS, "S"),
    ServerOption("metrics_file", None, "write Prometheus metrics to this file (for "
                 "node_exporter's textfile collector; name it *.prom)", metavar="PATH"),
)


class Options(object):
    """The server's settings; one not given has its default from SERVER_OPTIONS.

    max_connections_per_host 0: no limit per client address (nor does a value of
    max_connections or more limit anything more).
    """

    __slots__ = tuple(option.name for option in SERVER_OPTIONS)

    def __init__(self, **values):
        for option in SERVER_OPTIONS:
            setattr(self, option.name, values.pop(option.name, option.default))
        if values:
            raise TypeError("unknown server option(s): %s" % ", ".join(sorted(values)))

    @classmethod
    def from_args(cls, args):
        """The options the parsed command line `args` sets."""
        return cls(**dict((option.name, getattr(args, option.name))
                          for option in SERVER_OPTIONS))
