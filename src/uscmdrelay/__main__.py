# Entry point for `python3 -m uscmdrelay` and for the zipapp (whose top-level __main__.py is
# a copy of this file). It must stay valid Python 2 syntax: an old interpreter has to get
# this one-line message instead of a SyntaxError from the modules it cannot parse.
import sys

if sys.version_info < (3, 6):
    sys.stderr.write("uscmdrelay needs Python 3.6 or newer; this is Python %d.%d.%d\n"
                     % tuple(sys.version_info[:3]))
    sys.exit(1)

# `--version` alone is answered before the command line's modules are imported: a zipapp
# has no bytecode cache, so they would be compiled on every run just to print one line.
# The text is argparse's for the same flag (tests/test_cli.py compares the two).
if sys.argv[1:] == ["--version"]:
    from uscmdrelay import __version__
    sys.stdout.write("uscmdrelay %s\n" % __version__)
    sys.exit(0)

from uscmdrelay.cli import main  # noqa: E402  (after the version check, on purpose)

sys.exit(main())
