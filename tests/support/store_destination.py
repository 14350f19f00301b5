"""A pynetdicom storage SCP as a result destination whose abilities a test chooses: which SOP
classes and transfer syntaxes it accepts, and what status it answers per object.

Each object it stores is written under ``out_dir`` as ``<SOP Instance UID>.dcm`` (file meta as
received), so tests can run dciodvfy and read the SR back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

#: ``status(dataset, attempt number of this SOP Instance UID) -> DIMSE status``
StatusRule = Callable[[Dataset, int], int]


class StoreDestination:
    """A storage SCP on a free loopback port (``with StoreDestination(...) as dest``)."""

    def __init__(self, out_dir: Path, sop_classes: Iterable[str], *, aet: str = "RESULTS",
                 transfer_syntaxes: Iterable[str] = UNCOMPRESSED,
                 status: StatusRule | None = None):
        self.dir = out_dir
        self.aet = aet
        self.sop_classes = list(sop_classes)
        self.transfer_syntaxes = list(transfer_syntaxes)
        self.status = status or (lambda ds, n: 0x0000)
        self.attempts: dict[str, int] = {}
        self.answers: list[tuple[str, str, int]] = []     # (SOP class, SOP instance, status)
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        with self._lock:
            self.attempts[uid] = self.attempts.get(uid, 0) + 1
            n = self.attempts[uid]
        code = self.status(ds, n)
        with self._lock:
            self.answers.append((str(ds.SOPClassUID), uid, code))
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
            ds.save_as(self.dir / f"{uid}.dcm", enforce_file_format=True)
        return code

    def start(self) -> "StoreDestination":
        self.dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.aet)
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        self._server = ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def received(self) -> list[Path]:
        return sorted(self.dir.glob("*.dcm"))

    def received_datasets(self) -> list[Dataset]:
        return [dcmread(p) for p in self.received()]

    def __enter__(self) -> "StoreDestination":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
