"""The node's background loop, shared by the triage worker and the deliverer.

Both poll the job store for due work; an error (e.g. the database briefly unavailable) must
not end the thread: it is logged, waited out, and the thread puts its own in-flight work
back in the queue before polling again.
"""

from __future__ import annotations

import logging
import threading

from cxr_triage.dicom_node.store.jobs import JobStore

ERROR_BACKOFF_S = 2.0


class PollingThread(threading.Thread):
    """A daemon thread calling :meth:`run_once` until :meth:`stop`.

    When nothing was due it sets ``idle`` and sleeps ``poll_s`` or until ``wake`` is set.
    Subclasses implement :meth:`run_once` and :meth:`recover`.
    """

    error_msg = "polling thread error; retrying"

    def __init__(self, name: str, store: JobStore, poll_s: float):
        super().__init__(name=name, daemon=True)
        self.store = store
        self.poll_s = poll_s
        self._halt = threading.Event()
        self.idle = threading.Event()
        # set to look for due work now, not at the next poll
        self.wake = threading.Event()

    def stop(self) -> None:
        """Finish the work in hand, then exit (call ``join``)."""
        self._halt.set()
        self.wake.set()

    def run_once(self) -> bool:
        """Do one piece of due work; False when nothing was due."""
        raise NotImplementedError

    def recover(self) -> None:
        """Put this thread's in-flight work back in the queue (only it moves that state)."""
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    busy = self.run_once()
                except Exception:
                    # logged under the subclass's module, as before the loop was shared
                    logging.getLogger(type(self).__module__).exception(self.error_msg)
                    self._halt.wait(ERROR_BACKOFF_S)
                    try:
                        self.recover()
                    except Exception:  # noqa: BLE001
                        pass
                    continue
                if not busy:
                    self.idle.set()
                    self.wake.wait(self.poll_s)
                    self.wake.clear()
                else:
                    self.idle.clear()
        finally:
            self.store.close()
