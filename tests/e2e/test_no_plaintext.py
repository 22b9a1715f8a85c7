"""Nothing from an instance is stored in plaintext: store instances whose every indexed
attribute and UID carries a marker, use them (search, retrieve, frames, delete), then search every
byte at rest (the data dir, a pg_dump of the PostgreSQL index) and the server log for the
markers."""

import os
import pathlib
import subprocess

import pydicom
from pydicom.uid import generate_uid

from conftest import blob_files, dicom_file, read
from test_dicomweb import client, stow, to_bytes

# Text markers, and the dates (unlikely as 8 ASCII digits anywhere by chance).
TEXT_MARKERS = {
    "PatientName": "Qzvmarkfamily^Qzvmarkgiven",
    "PatientID": "QZVMARKPID",
    "AccessionNumber": "QZVMARKACC",
    "ReferringPhysicianName": "Qzvmarkdoctor^Qzvmarkref",
    "StudyDescription": "QZVMARK STUDY DESCRIPTION",
    "SeriesDescription": "QZVMARK SERIES DESCRIPTION",
    "ManufacturerModelName": "QZVMARKMODEL",
    "InstitutionName": "QZVMARK INSTITUTION",
}
DATE_MARKERS = {
    "StudyDate": "19370521",
    "PatientBirthDate": "19110713",
    "PerformedProcedureStepStartDate": "19230419",
}


def marked(name: str, study: str) -> pydicom.Dataset:
    dataset = read(dicom_file(name))
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in {**TEXT_MARKERS, **DATE_MARKERS}.items():
        setattr(dataset, keyword, value)
    return dataset


def markers_of(datasets) -> list[bytes]:
    markers = set()
    for value in TEXT_MARKERS.values():
        markers.add(value)
        # Normalized forms (search tokens are built from these) and name parts.
        for part in value.replace("^", " ").split():
            if part.lower().startswith("qzvmark"):
                markers.add(part)
                markers.add(part.lower())
    markers.update(DATE_MARKERS.values())
    for dataset in datasets:
        markers.update({dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID})
    found = [marker.encode() for marker in markers]
    # A stretch of pixel data: the blobs themselves must not hold the instance in the clear.
    for dataset in datasets:
        pixels = dataset.PixelData
        found.append(pixels[len(pixels) // 2 : len(pixels) // 2 + 48])
    return found


def hits(haystack: bytes, markers) -> list[bytes]:
    return [marker[:12] for marker in markers if marker in haystack]


def pg_dump(cluster, database: str) -> bytes:
    command = [str(cluster.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", database]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True).stdout


def test_no_marker_anywhere_at_rest(hds_any_index, request):
    hds = hds_any_index
    study = generate_uid()
    datasets = [marked("CT_small.dcm", study), marked("SC_rgb_rle_2frame.dcm", study), marked("MR_small.dcm", generate_uid())]
    response = stow(hds, [to_bytes(dataset) for dataset in datasets])
    assert response.status_code == 200, response.text[:300]

    web = client(hds)
    # Every kind of search, so every kind of token is written and looked up.
    assert len(web.search_for_studies(search_filters={"PatientID": TEXT_MARKERS["PatientID"]})) == 2
    assert len(web.search_for_studies(search_filters={"PatientName": "qzvmarkfam", "fuzzymatching": "true"})) == 2
    assert len(web.search_for_studies(search_filters={"StudyDate": "19370101-19371231"})) == 2
    assert len(web.search_for_series(search_filters={"ManufacturerModelName": TEXT_MARKERS["ManufacturerModelName"]})) == 3
    assert len(web.search_for_instances(search_filters={"SOPInstanceUID": datasets[0].SOPInstanceUID})) == 1
    # Retrieval decrypts: whole instances, metadata and frames come back as stored.
    first = datasets[0]
    retrieved = web.retrieve_instance(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert retrieved.PixelData == first.PixelData
    assert str(retrieved.PatientName) == TEXT_MARKERS["PatientName"]
    metadata = web.retrieve_study_metadata(study)
    assert len(metadata) == 2
    frame = hds.http.get(
        f"{hds.url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}/frames/1",
        headers={"Accept": "application/octet-stream"},
    )
    assert frame.status_code == 200 and frame.content == first.PixelData
    # A deleted study leaves no marker either.
    assert hds.http.delete(f"{hds.url}/studies/{datasets[2].StudyInstanceUID}").status_code == 204

    assert hds.stop() == 0
    markers = markers_of(datasets)
    at_rest = []
    for path in sorted(pathlib.Path(hds.data_dir).rglob("*")):
        if path.is_file():
            found = hits(path.read_bytes(), markers)
            if found:
                at_rest.append((str(path.relative_to(hds.data_dir)), found))
    assert at_rest == [], f"plaintext at rest: {at_rest}"
    blobs = blob_files(pathlib.Path(hds.data_dir))
    assert len(blobs) == 2, "the deleted study's blob is gone, the others are there"
    if hds.index.startswith("postgres://"):
        dump = pg_dump(request.getfixturevalue("postgres"), hds.index.rsplit("/", 1)[1])
        assert b"dicom_instances" in dump
        assert hits(dump, markers) == [], "plaintext in the PostgreSQL index"
    assert hits(pathlib.Path(hds.log_path).read_bytes(), markers) == [], "plaintext in the server log"
    hds.start()  # the fixture stops it again
