"""Tests for uscmdrelay. Importing this package puts src/ on sys.path, so the tests import
the source tree (`import uscmdrelay`) with nothing installed."""

import os
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
