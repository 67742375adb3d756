"""--metrics-file: writes the server's metrics (`metrics.RelayMetrics`) to a file for
node_exporter's textfile collector.

The file is replaced atomically (a temporary file in the same directory, then rename), so
a reader sees the old text or the new, never part of one. It is written at start-up,
every WRITE_INTERVAL_SECONDS while anything changed, after a reload, and at exit, from
the server's loop. A failed write is logged once (WARNING) and tried again at the next
round; it never stops the server.
"""

import logging
import os
import platform
import tempfile
import time

from . import __version__
from .metrics import RelayMetrics

log = logging.getLogger("uscmdrelay")

WRITE_INTERVAL_SECONDS = 5.0
FILE_MODE = 0o644  # node_exporter runs as another user: the file must be readable


def metrics_file(path, config):
    """The MetricsFile for --metrics-file `path`, counting from now under `config`."""
    return MetricsFile(path, RelayMetrics(config, time.time(), __version__,
                                          platform.python_version(),
                                          platform.python_implementation()))


class MetricsFile(object):
    """Writes `metrics` (a RelayMetrics) to `path`."""

    def __init__(self, path, metrics):
        self.path = os.path.abspath(path)
        self.metrics = metrics
        self._written = None  # the text last written, to skip rounds with no change
        self._failing = False
        self._timer = None
        self._loop = None

    def start(self, loop):
        """Writes the file now, then every WRITE_INTERVAL_SECONDS on `loop` (an
        eventloop.Loop) when the text changed."""
        self._loop = loop
        self.write()
        self._schedule()

    def stop(self):
        """Writes the file one last time and stops the rounds."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.write()

    def write(self):
        """Writes the current metrics if they differ from the file's; True when the file
        holds them. Never raises OSError: a failure is logged, the first one at WARNING."""
        text = self.metrics.render()
        if text == self._written:
            return True
        try:
            self._replace(text.encode("utf-8"))
        except OSError as error:
            if not self._failing:
                self._failing = True
                log.warning("cannot write the metrics file %s: %s (trying again every "
                            "%g s)", self.path, error.strerror or error,
                            WRITE_INTERVAL_SECONDS)
            return False
        if self._failing:
            self._failing = False
            log.info("metrics file %s written again", self.path)
        self._written = text
        return True

    def _round(self):
        self._timer = None
        self.write()
        self._schedule()

    def _schedule(self):
        self._timer = self._loop.call_at(time.monotonic() + WRITE_INTERVAL_SECONDS,
                                         self._round)

    def _replace(self, data):
        """Writes `data` to a temporary file beside the target and renames it over the
        target. No fsync: a reader only needs the rename to be atomic, which it is, and
        after a crash the next start writes the file anew; an fsync every few seconds
        could stall the loop on a busy disk. Raises OSError."""
        directory, name = os.path.split(self.path)
        # Not *.prom: the textfile collector must not read a half-written temporary.
        fd, temporary = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp",
                                         dir=directory)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
