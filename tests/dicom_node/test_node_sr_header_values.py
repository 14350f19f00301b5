"""Header values a strict PACS refuses, copied into the result (issue 23, "Also").

Films sent by dcmtk's storescu to the node carry what real senders write: values longer than
their VR allows (LO Patient ID, PN names, SH Accession Number), control characters, and a
Specific Character Set no library knows ("NONE", "Not Supplied") over UTF-8 text. The SR the
PACS receives must carry conformant copies (dciodvfy finds no VR error), the patient's name
exactly as written (the UTF-8 bytes read as UTF-8, declared ISO_IR 192, never a Latin-1
misreading), and the spool must keep the file as received.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import DataElement, dcmread
from pydicom.uid import generate_uid
from support.node_peers import StoreSCP, free_port, storescu, wait_for, write_node_config
from support.sr_checks import dciodvfy_errors

from cxr_triage.config import load_config
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.spool import dataset_sha256

NAME = "Müller^Jörg"
LONG_ID = "ID-" + "7" * 70                       # LO: 64 characters at most
LONG_NAME = "Verylongfamilyname" * 4 + "^Anna"     # PN: 64 per component group


def _odd_film(src: Path, out: Path, charset: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # pydicom warns of every value written here
        ds = dcmread(src)
        ds.StudyInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = charset
        for tag, vr, raw in ((0x00100010, "PN", NAME.encode("utf-8")),        # Patient's Name
                             (0x00100020, "LO", LONG_ID.encode()),           # Patient ID
                             (0x00080050, "SH", b"ACC\x0112\x1b34"),        # Accession Number
                             (0x00080090, "PN", LONG_NAME.encode())):        # Referring Physician
            ds[tag] = DataElement(tag, vr, raw)
        path = out / f"{charset.replace(' ', '_')}.dcm"
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("charset", ["NONE", "Not Supplied"])
def test_the_sr_copies_conformant_values_and_the_name_as_written(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path], charset: str) -> None:
    film = _odd_film(sample_dicoms["nih_gcp_dx_chest_nofinding"], tmp_path, charset)
    with StoreSCP(tmp_path / "pacs", free_port()) as pacs:
        node = Node(load_config(write_node_config(tmp_path / "node.toml", 0, tiny_model,
                                                  node={"quiet_period_s": 0.3},
                                                  delivery={"destinations": [pacs.destination]}))).start()
        try:
            assert storescu([film], node.port).returncode == 0
            wait_for(lambda: [p for p in pacs.dir.rglob("*") if p.is_file()], 90, 0.2, "the SR")
            spooled = [p for p in node.dirs.spool.rglob("*.dcm") if ".incoming" not in p.parts]
        finally:
            node.stop(timeout_s=10)
        (sr_path,) = [p for p in pacs.dir.rglob("*") if p.is_file()]
    sr = dcmread(sr_path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.PatientName) == NAME                          # the same name, the same bytes
    assert str(sr.PatientID) == LONG_ID[:64]
    assert str(sr.AccessionNumber) == "ACC1234"
    assert all(len(group) <= 64 for group in str(sr.ReferringPhysicianName).split("="))
    assert [e for e in dciodvfy_errors(sr_path) if "Value" in e or "length" in e.lower()] == []
    # the spool keeps the data set exactly as received
    (kept,) = spooled
    assert dataset_sha256(kept) == dataset_sha256(film)
