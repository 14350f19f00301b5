"""Bounded fuzzing (hypothesis) of the film reader and of the SCP's C-STORE handler.

Seeds are real films (downsized so each example is cheap) in four encodings. Mutations flip,
insert and cut bytes, or rewrite the image attributes decoders size themselves from.

* ``read_film``: a film in [0, 1] or :class:`NotAssessable`; nothing else, ever, and fast.
* ``StoreHandler.on_store``, called directly with fabricated events: one of the statuses the
  node documents, never an exception; Success only with the exact bytes in the spool and a
  row in the job store; any refusal leaves a quarantine entry; no file outside the spool or
  quarantine, whatever the request's UIDs say; the audit log stays valid JSON lines.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from support.reliability_harness import PHI_ID, PHI_NAME, SUMMARY, film_pngs

from cxr_triage.contract.result import NotAssessable
from cxr_triage.inference.reader import read_film

EXAMPLES = int(os.environ.get("CXRT_FUZZ_EXAMPLES", "300"))   # bounded: ~20 s in CI
SLOW_S = 10.0          # one read taking longer than this is a denial of service


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> list[bytes]:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    png = film_pngs(shared_data, 1)[0]
    small = np.asarray(Image.open(png).convert("L").resize((96, 96)))
    out = []
    for ts in (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless):
        ds = png_to_dicom(small, transfer_syntax_uid=ts, bits_stored=12, patient_name=PHI_NAME,
                          patient_id=PHI_ID)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


# attributes decoders trust: (keyword, VR, strategy)
_ATTRS = [
    ("Rows", "US", st.integers(0, 65535)), ("Columns", "US", st.integers(0, 65535)),
    ("BitsAllocated", "US", st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64])),
    ("BitsStored", "US", st.integers(0, 40)), ("HighBit", "US", st.integers(0, 40)),
    ("PixelRepresentation", "US", st.integers(0, 3)), ("SamplesPerPixel", "US", st.integers(0, 4)),
    ("NumberOfFrames", "IS", st.integers(-2, 10**7).map(str)),
    ("PhotometricInterpretation", "CS", st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB",
                                                          "PALETTE COLOR", "YBR_FULL", ""])),
    ("RescaleSlope", "DS", st.sampled_from(["0", "-1", "1e308", "nan", "inf", "1"])),
    ("WindowWidth", "DS", st.sampled_from(["0", "-5", "1e-300", "nan", "4096"])),
    ("PixelPaddingValue", "US", st.integers(0, 65535)),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(seeds)))
    kind = draw(st.sampled_from(["attrs", "flip", "insert", "cut", "attrs+flip"]))
    if kind.startswith("attrs"):
        from pydicom import dcmread

        ds = dcmread(io.BytesIO(bytes(raw)))
        for kw, vr, strat in draw(st.lists(st.sampled_from(_ATTRS), min_size=1, max_size=4)):
            ds.add_new(kw, vr, draw(strat))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = bytearray(buf.getvalue())
    if kind.endswith("flip"):
        for _ in range(draw(st.integers(1, 16))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif kind == "insert":
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


def test_reader_fuzz(seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("fuzz_reader")
    tally = {"examples": 0, "films": 0, "not_assessable": 0, "slowest_s": 0.0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(data=mutated(seeds))
    def check(data: bytes) -> None:
        path = work / "film.dcm"
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            film = read_film(path)
        except NotAssessable as exc:
            assert exc.reason is not None
            tally["not_assessable"] += 1
        else:
            px = film.pixels
            assert px.ndim == 2 and px.dtype == np.float32 and px.size > 0
            assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
            tally["films"] += 1
        took = time.perf_counter() - t0
        tally["slowest_s"] = max(tally["slowest_s"], took)
        tally["examples"] += 1
        assert took < SLOW_S, f"reading took {took:.1f} s"

    check()
    SUMMARY.record("fuzz_reader", malformed_inputs_tried=tally["examples"],
                   **{k: round(v, 3) if isinstance(v, float) else v for k, v in tally.items()})


# ------------------------------------------------------------------------------ C-STORE handler

class _Event:
    """What the handler reads from a pynetdicom C-STORE event."""

    def __init__(self, raw: bytes | None, sop_class: str, sop_uid: str, calling: str, host: str):
        req = SimpleNamespace(ae_title=calling, address=host,
                              primitive=SimpleNamespace(calling_ae_title=calling))
        self.assoc = SimpleNamespace(requestor=req)
        self.request = SimpleNamespace(AffectedSOPInstanceUID=sop_uid, AffectedSOPClassUID=sop_class)
        self._raw = raw

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        if self._raw is None:
            raise ValueError("the peer's dataset could not be assembled")
        return self._raw


_UIDS = st.one_of(
    st.just("__dataset__"),                                   # the UID the file carries
    st.builds(lambda: str(generate_uid())),
    st.sampled_from(["", "../../../../tmp/escape", "1.2.3/../../x", "1." + "9" * 80, "a\x00b",
                     "..", "/", "1.2.3\\..\\x", " 1.2.3 "]),
    st.text(max_size=70),
)


def test_store_handler_fuzz(seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    from cxr_triage.dicom_node.receive.scp import StoreHandler
    from cxr_triage.dicom_node.store.audit import AuditLog
    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs, dataset_sha256

    root = tmp_path_factory.mktemp("fuzz_scp")
    dirs = StateDirs(root / "state").create()
    store = JobStore(dirs.queue_db)
    handler = StoreHandler(store, Spool(dirs.spool), Quarantine(dirs.quarantine),
                           AuditLog(dirs.audit_log), "CXRTRIAGE")
    allowed = {0x0000, 0xA700, 0xA900, 0xC000}
    sent_dir = tmp_path_factory.mktemp("fuzz_sent")
    tally = {"examples": 0, "success": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(data=st.one_of(mutated(seeds), st.binary(max_size=2048), st.none()),
           sop_uid=_UIDS, sop_class=st.sampled_from(["1.2.840.10008.5.1.4.1.1.1.1",
                                                      "1.2.840.10008.5.1.4.1.1.88.22", "", "x/y"]),
           calling=st.text(max_size=20))
    def check(data: bytes | None, sop_uid: str, sop_class: str, calling: str) -> None:
        if sop_uid == "__dataset__":
            try:
                from pydicom import dcmread

                sop_uid = str(dcmread(io.BytesIO(data or b""), stop_before_pixels=True).SOPInstanceUID)
            except Exception:  # noqa: BLE001 - unreadable: any UID will do
                sop_uid = str(generate_uid())
        before_q = len(list(dirs.quarantine.glob("*.json")))
        status = handler.on_store(_Event(data, sop_class, sop_uid, calling, "127.0.0.1"))
        assert status in allowed, hex(status)
        tally["examples"] += 1
        if status == 0x0000:
            tally["success"] += 1
            if not sop_class.startswith("1.2.840.10008.5.1.4.1.1.88."):
                rows = store.connection().execute("SELECT path FROM instances WHERE sop_instance_uid=?",
                                            (sop_uid,)).fetchall()
                # the data set as sent is what is stored (an identical re-send keeps the first
                # file; preamble and file meta are the receiver's, not the sender's)
                sent = sent_dir / "sent.dcm"
                sent.write_bytes(data or b"")
                assert len(rows) == 1 and dataset_sha256(Path(rows[0][0])) == dataset_sha256(sent)
        else:
            tally["refused"] += 1
            assert len(list(dirs.quarantine.glob("*.json"))) == before_q + 1

    check()
    outside = [p for p in root.rglob("*") if p.is_file() and not any(
        p.is_relative_to(d) for d in (dirs.spool, dirs.quarantine))
        and p not in (dirs.queue_db, dirs.audit_log) and not p.name.startswith("queue.sqlite3")]
    assert outside == [], outside
    assert not (Path("/tmp") / "escape").exists()
    assert [p for p in dirs.spool.rglob("*") if p.is_file() and p.name.endswith(".part")] == []
    for line in dirs.audit_log.read_text().splitlines():
        json.loads(line)
    store.close()
    SUMMARY.record("fuzz_store_handler", malformed_inputs_tried=tally["examples"], **tally)


pytestmark = pytest.mark.reliability
