"""The one table of reply codes, and the exception that carries one.

10xx: authentication, 20xx: the client's data, 30xx: running the command, 9999: a bug in
the server. A `RelayError` is what every layer raises to answer a request with a code;
the server turns it into the JSON reply. Nothing here does any IO.
"""

OK = 0
AUTH_FAILED = 1001
CLUSTER_NOT_ALLOWED = 1002
ADDRESS_NOT_ALLOWED = 1003
BAD_JSON = 2001
BAD_FIELD = 2002
UNKNOWN_CLUSTER = 2003
UNKNOWN_COMMAND = 2004
REQUEST_TOO_LARGE = 2005
REQUEST_TIMEOUT = 2006
ARGUMENTS_NOT_ALLOWED = 2007
COMMAND_FAILED = 3001
COMMAND_NOT_STARTED = 3002
COMMAND_TIMED_OUT = 3003
SERVER_BUSY = 3004
ALREADY_RUNNING = 3005
INTERNAL_ERROR = 9999

CODES = {
    OK: "the command ran and exited 0",
    AUTH_FAILED: "authentication failed",
    CLUSTER_NOT_ALLOWED: "this key may not use this cluster",
    ADDRESS_NOT_ALLOWED: "client address not allowed for this key",
    BAD_JSON: "the request is not UTF-8 JSON, or not a JSON object",
    BAD_FIELD: "a field is missing or invalid",
    UNKNOWN_CLUSTER: "unknown cluster",
    UNKNOWN_COMMAND: "unknown command in that cluster",
    REQUEST_TOO_LARGE: "the request is too large",
    REQUEST_TIMEOUT: "the request was not complete in time",
    ARGUMENTS_NOT_ALLOWED: "arguments not allowed by this command's policy",
    COMMAND_FAILED: "the command exited with a non-zero status",
    COMMAND_NOT_STARTED: "the command could not be started",
    COMMAND_TIMED_OUT: "the command timed out and was killed",
    SERVER_BUSY: "the server is busy",
    ALREADY_RUNNING: "command already running",
    INTERNAL_ERROR: "internal server error",
}


class RelayError(Exception):
    """A request that gets an error reply: `.code` is from CODES, `.message` is for the client."""

    def __init__(self, code, message=None):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message if message is not None else CODES[code]

    def __str__(self):
        return "%d: %s" % (self.code, self.message)
