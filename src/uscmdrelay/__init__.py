"""uscmdrelay: run pre-configured commands for trusted clients over TCP.

This file stays importable by any Python, so that an old interpreter reaches the version
check in __main__ instead of a SyntaxError.
"""

__version__ = "1.0.0"
