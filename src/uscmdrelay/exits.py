"""The exit statuses of every uscmdrelay command line, in one place.

The server and configtest use 0/1/2; `call` passes the remote command's status through
and keeps 255 (like ssh) for a relay error; usage errors are 2 everywhere.
"""

EXIT_OK = 0
EXIT_STARTUP = 1      # the server could not start: port in use, bad host, unwritable log
EXIT_CONFIG = 2       # a configuration error
EXIT_USAGE = 2        # a command-line usage error (argparse's own status)
EXIT_RELAY_ERROR = 255  # `call`: the relay refused or failed; the command did not run
EXIT_INTERRUPTED = 128 + 2  # `call` ended by Ctrl-C (SIGINT), as a shell reports it
