"""One sending thread per destination, so a slow or silent peer never delays another.

A lane keeps its DICOM association open for :data:`KEEP_OPEN_S` after a batch
(``dicom_send.HeldAssociation``): the objects of a result, committed one after another (the
SR first, then its summary image), go over one association.

A destination that accepts TCP and never answers (a hung PACS, a RIS whose MLLP listener
stopped reading) holds its send for the network time-out. Sent from one loop, every other
destination's results waited behind it (issue 23, class 3). Here each destination has its
own *lane*: a daemon thread with a queue of batches, sending them in order. The deliverer
thread only claims what is due and hands each destination's batch to its lane.

Stopping (:meth:`Lanes.stop`) gives the lanes until a deadline to finish what they hold, then
*cuts* every send still in flight: A-ABORT on the pynetdicom associations (requested or being
requested), shutdown of the MLLP sockets, and a 1 s connect/ACSE time-out for any send that
starts after the cut. A cut send is not recorded: its deliveries stay ``sending`` and the
next start puts them back in the queue (:meth:`~cxr_triage.dicom_node.store.jobs.JobStore.recover`),
so an interrupted attempt never counts against the back-off or the dead letter.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any, Callable

from pynetdicom import AE

from cxr_triage.dicom_node.compat import close_transports
from cxr_triage.dicom_node.delivery.dicom_send import HeldAssociation
from cxr_triage.dicom_node.store.jobs import DueDelivery

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0      # connect/ACSE/DIMSE time-out of a send started after the cut
#: a lane keeps its DICOM association open this long without a batch: a result's summary
#: image, committed after its SR, goes over the SR's association
KEEP_OPEN_S = 2.0

# (destination, batch, in-flight registry) -> None; sends the batch and records each outcome
SendBatch = Callable[[str, list[DueDelivery], "InFlight"], None]


class InFlight:
    """The open handles of one lane's current send (pynetdicom AEs, MLLP sockets), so that a
    stop can cut them. Senders call :meth:`track` with each handle right after making it.
    ``held``: the lane's DICOM association kept open between batches (a lane's only)."""

    def __init__(self, keep: bool = False) -> None:
        self._lock = threading.Lock()
        self._handles: list[Any] = []
        self.cut_done = threading.Event()
        self.held: HeldAssociation | None = HeldAssociation() if keep else None

    def track(self, handle: Any) -> None:
        """Register an AE (before it associates) or a connected socket; after a cut it is
        given the shutdown time-outs (AE) or closed at once (socket)."""
        with self._lock:
            if not self.cut_done.is_set():
                self._handles.append(handle)
                return
        _cut(handle)

    def clear(self) -> None:
        """The batch is over: forget its handles."""
        with self._lock:
            self._handles = []

    def cut(self) -> None:
        """Abort every association and close every socket held now or made later."""
        with self._lock:
            self.cut_done.set()
            handles, self._handles = self._handles, []
        for handle in handles:
            _cut(handle)
        if self.held is not None:
            self.held.release(abort=True)


def _cut(handle: Any) -> None:
    try:
        if isinstance(handle, socket.socket):
            try:
                handle.shutdown(socket.SHUT_RDWR)
            finally:
                handle.close()
        elif isinstance(handle, AE):
            handle.acse_timeout = handle.dimse_timeout = handle.network_timeout = SHUTDOWN_TIMEOUT_S
            handle.connection_timeout = SHUTDOWN_TIMEOUT_S
            close_transports(handle)
    except Exception as exc:  # noqa: BLE001 - the peer or the socket is gone already
        log.debug("cutting a send: %s", type(exc).__name__)


class _Lane(threading.Thread):
    """One destination's sending thread: its batches in order, one at a time."""

    def __init__(self, destination: str, send: SendBatch, close_store: Callable[[], None]):
        super().__init__(name=f"deliver:{destination}", daemon=True)
        self.destination = destination
        self.batches: queue.Queue[list[DueDelivery] | None] = queue.Queue()
        self.in_flight = InFlight(keep=True)
        self._send = send
        self._close_store = close_store

    def run(self) -> None:
        try:
            while (batch := self._next()) is not None:
                batch, last = self._with_queued(batch)
                if not self.in_flight.cut_done.is_set():   # else left ``sending`` for the next start
                    try:
                        self._send(self.destination, batch, self.in_flight)
                    except Exception:  # the lane must outlive any one batch
                        log.exception("delivery lane error", extra={"destination": self.destination})
                    self.in_flight.clear()
                if last:
                    break
        finally:
            if self.in_flight.held is not None:
                self.in_flight.held.release()
            self._close_store()                 # this thread's database connection

    def _next(self) -> list[DueDelivery] | None:
        """The next batch; a held association is released after :data:`KEEP_OPEN_S` without one."""
        held = self.in_flight.held
        while held is not None and held.assoc is not None:
            try:
                return self.batches.get(timeout=KEEP_OPEN_S)
            except queue.Empty:
                held.release()
        return self.batches.get()

    def _with_queued(self, batch: list[DueDelivery]) -> tuple[list[DueDelivery], bool]:
        """``batch`` and every batch queued behind it, as one (one association, one wait for
        a slow peer, not one per batch); True when the stop sentinel was among them."""
        while True:
            try:
                more = self.batches.get_nowait()
            except queue.Empty:
                return batch, False
            if more is None:
                return batch, True
            batch = batch + more


class Lanes:
    """The deliverer's lanes, one per destination, made on first use.

    ``send(destination, batch, in_flight)`` sends one batch and records it; ``close_store``
    closes the calling thread's job-store connection (each lane has its own)."""

    def __init__(self, send: SendBatch, close_store: Callable[[], None]):
        self._send = send
        self._close_store = close_store
        self._lanes: dict[str, _Lane] = {}

    def put(self, destination: str, batch: list[DueDelivery]) -> None:
        """Queue a batch on the destination's lane (returns at once)."""
        lane = self._lanes.get(destination)
        if lane is None:
            lane = self._lanes[destination] = _Lane(destination, self._send, self._close_store)
            lane.start()
        lane.batches.put(batch)

    def stop(self, deadline: float) -> list[str]:
        """Let the lanes finish what they hold until ``deadline`` (``time.monotonic()``),
        then cut what is still in flight and wait at most a second more. Returns the
        destinations whose send was cut."""
        for lane in self._lanes.values():
            lane.batches.put(None)
        for lane in self._lanes.values():
            lane.join(max(0.0, deadline - time.monotonic()))
        cut = [d for d, lane in self._lanes.items() if lane.is_alive()]
        for dest in cut:
            self._lanes[dest].in_flight.cut()
        end = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for dest in cut:
            self._lanes[dest].join(max(0.0, end - time.monotonic()))
        return cut
