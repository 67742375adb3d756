"""Worker threads for complete requests: as many as there are requests to run.

A job never waits for another to finish; the server's connection limit bounds how many
run at once. Threads idle for WORKER_IDLE_SECONDS go away.
"""

import logging
import queue
import threading

log = logging.getLogger("uscmdrelay")

WORKER_IDLE_SECONDS = 60.0


class Workers(object):
    """A pool that grows on demand and shrinks when idle."""

    def __init__(self):
        self._jobs = queue.Queue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job):
        """Runs `job()` in a thread; raises RuntimeError if a needed thread cannot start."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        # A new thread gets its first job directly: if it cannot start, nothing is queued.
        thread = threading.Thread(target=self._work, args=(job,), name="uscmdrelay-worker")
        thread.daemon = True
        thread.start()

    def _work(self, job):
        while job is not None:
            try:
                job()
            except Exception:
                log.exception("internal error in a worker thread")
            with self._lock:
                self._idle += 1
            job = self._next_job()

    def _next_job(self):
        """Waits for a job; returns None when this thread should retire."""
        while True:
            try:
                return self._jobs.get(timeout=WORKER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # Retire only if no job was promised to an idle thread meanwhile.
                    if self._idle > 0 and self._jobs.empty():
                        self._idle -= 1
                        return None
