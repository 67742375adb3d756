"""Live output: a running command's stdout and stderr turned into event lines as it
writes them, for a request with `"stream": true`.

A `Streamer` sits between an `executor.Run` (which hands it the bytes it reads, already
capped at --max-output per stream) and a `replies.Stream` (which writes lines to the
client as it takes them). It decodes each stream as UTF-8 incrementally, so a character
split across two reads arrives whole; it gathers what arrives within COALESCE_SECONDS
into one line per stream switch, so `yes` is not one line per byte; and it pauses the
command's pipes while the client has more than BACKLOG_BYTES unsent, so a slow client
makes the command wait instead of the server buffer. It writes no socket itself.
"""

import codecs
import time

from .protocol import encode_reply

# How long bytes that arrived may wait for more before they are sent: a few
# milliseconds, invisible to a person, but many small writes become one line.
COALESCE_SECONDS = 0.005
# Output gathered past this many bytes is sent at once.
FLUSH_BYTES = 65536
# A client with more than this many bytes not taken yet pauses its command's output,
# which resumes once it has taken half of them.
BACKLOG_BYTES = 256 * 1024
STREAMS = ("stdout", "stderr")


def event_line(name, text):
    """The bytes of one event line: `{"stream": name, "data": text}` and a newline."""
    return encode_reply({"stream": name, "data": text})


class Streamer(object):
    """Feeds a command's output to `stream` (a replies.Stream) on `loop`.

    `output(name, data)` is the Run's `on_output`; set `run` once the Run exists, so
    that back-pressure can pause it. `close()` sends what is left (a character cut off
    at the end becomes U+FFFD) before the final line; `discard()` drops everything from
    now on (the client is gone) and lets the command's output be read and thrown away.
    """

    def __init__(self, loop, stream):
        self.run = None
        self._loop = loop
        self._stream = stream
        self._decoders = dict((name, codecs.getincrementaldecoder("utf-8")("replace"))
                              for name in STREAMS)
        self._pending = []  # [stream name, [texts]] in the order they were read
        self._pending_bytes = 0
        self._timer = None
        self._discarding = False

    def output(self, name, data):
        """Takes `data` (bytes) read from the command's stream `name`."""
        if self._discarding:
            return
        self._add(name, self._decoders[name].decode(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_at(time.monotonic() + COALESCE_SECONDS,
                                             self._due)

    def flush(self):
        """Sends what was gathered, one line per run of one stream; pauses the command
        if the client is behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        for name, texts in pending:
            self._stream.write(event_line(name, "".join(texts)))
        if (self._stream.unsent > BACKLOG_BYTES and self.run is not None
                and not self._discarding):
            self.run.pause_output()
            self._stream.when_below(BACKLOG_BYTES // 2, self._caught_up)

    def close(self):
        """The command is over: sends the rest, undecodable tails included."""
        if not self._discarding:
            for name in STREAMS:
                self._add(name, self._decoders[name].decode(b"", True))
        self.flush()

    def discard(self):
        """The client is gone: drops what is gathered and whatever comes, and reads the
        command's output again if it was paused, so nothing waits for that client."""
        self._discarding = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = []
        self._pending_bytes = 0
        if self.run is not None:
            self.run.resume_output()

    def _add(self, name, text):
        if not text:
            return
        if self._pending and self._pending[-1][0] == name:
            self._pending[-1][1].append(text)
        else:
            self._pending.append([name, [text]])

    def _due(self):
        self._timer = None
        self.flush()

    def _caught_up(self):
        if self.run is not None:
            self.run.resume_output()
