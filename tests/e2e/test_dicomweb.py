"""End to end: a real `hds up` driven by the `dicomweb-client` package and plain HTTP, on real
DICOM files from pydicom and pydicom-data."""

import io
import json
import threading

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from conftest import read, dicom_file

# name -> (transfer syntax, frames); every common syntax, native and encapsulated, multi-frame.
FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
    "US1_UNCR.dcm": "1.2.840.10008.1.2.1",
    "emri_small.dcm": "1.2.840.10008.1.2.1",
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_rle_2frame.dcm": "1.2.840.10008.1.2.5",
    "emri_small_jpeg_2k_lossless.dcm": "1.2.840.10008.1.2.4.90",
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def unique_copy(name: str) -> pydicom.Dataset:
    """The file with fresh UIDs: pydicom ships the same instance in several syntaxes."""
    dataset = read(dicom_file(name))
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


# MPEG-2 Main Profile @ Main Level: a transfer syntax hds stores but does not decode.
UNDECODABLE_SYNTAX = "1.2.840.10008.1.2.4.100"


def undecodable_copy() -> pydicom.Dataset:
    """An instance stored in a syntax hds does not decode: pydicom's data has none, so a JPEG
    2000 MR (encapsulated) is relabelled MPEG-2, whose frames no decoder of hds reads."""
    dataset = unique_copy("MR_small_jp2klossless.dcm")
    dataset.file_meta.TransferSyntaxUID = UNDECODABLE_SYNTAX
    return dataset


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def client(hds) -> DICOMwebClient:
    return DICOMwebClient(url=hds.url, headers={"Authorization": f"Bearer {hds.token()}"})


def test_store_search_retrieve_delete_with_dicomweb_client(hds_any_index):
    hds = hds_any_index
    web = client(hds)
    datasets = {name: unique_copy(name) for name in FILES}
    response = web.store_instances(list(datasets.values()))
    referenced = response.ReferencedSOPSequence
    assert len(referenced) == len(FILES)
    assert "FailedSOPSequence" not in response

    for name, dataset in datasets.items():
        study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
        # QIDO at each level.
        studies = web.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert len(studies) == 1
        assert studies[0]["0020000D"]["Value"] == [study]
        assert studies[0]["00201208"]["Value"] == [1]
        series_found = web.search_for_series(study_instance_uid=study)
        assert [s["0020000E"]["Value"][0] for s in series_found] == [series]
        instances = web.search_for_instances(study_instance_uid=study, series_instance_uid=series)
        assert [i["00080018"]["Value"][0] for i in instances] == [sop]

        # Retrieve as stored, byte for byte the same data set.
        retrieved = web.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
        assert retrieved.SOPInstanceUID == sop
        assert retrieved.file_meta.TransferSyntaxUID == FILES[name]
        if "PixelData" in dataset:
            assert retrieved.PixelData == dataset.PixelData, name

        # Metadata has the attributes and no bulk pixel data.
        metadata = web.retrieve_instance_metadata(study, series, sop)
        assert metadata["00080018"]["Value"] == [sop]
        assert "7FE00010" not in metadata

        # Frames.
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        if "PixelData" in dataset:
            wanted = [1, frames] if frames > 1 else [1]
            syntax = FILES[name]
            frame_size = len(dataset.PixelData) // frames
            stored = [dataset.PixelData[(n - 1) * frame_size:n * frame_size] for n in wanted]
            url = f"{hds.url}/studies/{study}/series/{series}/instances/{sop}/frames/{','.join(map(str, wanted))}"
            if syntax in ("1.2.840.10008.1.2", EXPLICIT_LE):
                got = web.retrieve_instance_frames(study, series, sop, frame_numbers=wanted)
                assert got == stored, name
            elif syntax == "1.2.840.10008.1.2.2":
                # Without a transfer syntax, big endian frames come back transcoded to little
                # endian samples (those of the little endian twin); as stored only when asked.
                plain = hds.http.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
                assert plain.status_code == 200, name
                twin = unique_copy("MR_small.dcm").PixelData
                assert multipart_parts(plain) == [twin[(n - 1) * frame_size:n * frame_size] for n in wanted], name
                accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
                got = hds.http.get(url, headers={"Accept": accept})
                assert got.status_code == 200, got.text
                assert multipart_parts(got) == stored, name
                first_part_head = got.content.split(b"\r\n\r\n", 1)[0]
                assert f"transfer-syntax={syntax}".encode() in first_part_head, name
            else:
                accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
                got = hds.http.get(url, headers={"Accept": accept})
                assert got.status_code == 200, got.text
                from pydicom.encaps import generate_frames

                expected_all = list(generate_frames(dataset.PixelData, number_of_frames=frames))
                parts = multipart_parts(got)
                assert parts == [expected_all[n - 1] for n in wanted], name

    # Delete at each level.
    jpeg = datasets["SC_rgb_jpeg_dcmtk.dcm"]
    web.delete_instance(jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID)
    ct = datasets["CT_small.dcm"]
    web.delete_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    mr = datasets["MR_small_RLE.dcm"]
    web.delete_study(mr.StudyInstanceUID)
    for gone in (jpeg, ct, mr):
        url = f"{hds.url}/studies/{gone.StudyInstanceUID}/series/{gone.SeriesInstanceUID}/instances/{gone.SOPInstanceUID}"
        assert hds.http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}).status_code == 404
        assert hds.http.get(f"{hds.url}/studies/{gone.StudyInstanceUID}/metadata").status_code == 404
        assert web.search_for_studies(search_filters={"StudyInstanceUID": gone.StudyInstanceUID}) == []
        assert hds.http.delete(f"{hds.url}/studies/{gone.StudyInstanceUID}").status_code == 404
    # The others are untouched.
    us = datasets["US1_UNCR.dcm"]
    assert web.retrieve_study(us.StudyInstanceUID, media_types=(("application/dicom", "*"),))[0].SOPInstanceUID == us.SOPInstanceUID


def multipart_parts(response) -> list:
    content_type = response.headers["Content-Type"]
    boundary = [p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")][0]
    body = response.content
    delimiter = b"--" + boundary.encode()
    pieces = body.split(delimiter)
    assert pieces[-1].strip() == b"--", "response must end with the closing boundary"
    parts = []
    for piece in pieces[1:-1]:
        head, _, content = piece.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        parts.append(content)
    return parts


def multipart_body(parts, boundary="hds-test-boundary"):
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(hds, parts, study=None):
    body, content_type = multipart_body(parts)
    url = f"{hds.url}/studies" + (f"/{study}" if study else "")
    return hds.http.post(url, data=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"})


def failure_reasons(response):
    failed = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


def test_stow_status_codes_and_failure_reasons(hds):
    first = unique_copy("CT_small.dcm")
    second = unique_copy("MR_small.dcm")
    response = stow(hds, [to_bytes(first)])
    assert response.status_code == 200
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [first.SOPInstanceUID]
    assert response.headers["Content-Type"].startswith("application/dicom+json")

    # Already stored: 409, 45070.
    again = stow(hds, [to_bytes(first)])
    assert again.status_code == 409 and failure_reasons(again) == [45070]

    # Some stored: 202.
    mixed = stow(hds, [to_bytes(first), to_bytes(second)])
    assert mixed.status_code == 202 and failure_reasons(mixed) == [45070]

    # Study in the URL differs: 43265.
    third = unique_copy("CT_small.dcm")
    mismatch = stow(hds, [to_bytes(third)], study="1.2.3.4")
    assert mismatch.status_code == 409 and failure_reasons(mismatch) == [43265]

    # Missing SOPInstanceUID: validation failure 43264.
    broken = unique_copy("CT_small.dcm")
    del broken.SOPInstanceUID
    invalid = stow(hds, [to_bytes(broken)])
    assert invalid.status_code == 409 and failure_reasons(invalid) == [43264]

    # A UID that is not digits and dots.
    bad_uid = unique_copy("CT_small.dcm")
    bad_uid.SeriesInstanceUID = "1.2.abc"
    assert failure_reasons(stow(hds, [to_bytes(bad_uid)])) == [43264]

    # Not DICOM at all: processing failure 272.
    garbage = stow(hds, [b"this is not a DICOM file" * 10])
    assert garbage.status_code == 409 and failure_reasons(garbage) == [272]

    # Single application/dicom body.
    single = unique_copy("MR_small.dcm")
    response = hds.http.post(f"{hds.url}/studies", data=to_bytes(single), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200

    # Unsupported media types: 415.
    assert hds.http.post(f"{hds.url}/studies", data=b"{}", headers={"Content-Type": "application/json"}).status_code == 415
    xml = hds.http.post(f"{hds.url}/studies", data=b"x", headers={"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'})
    assert xml.status_code == 415
    # A multipart body without a boundary: 400.
    assert hds.http.post(f"{hds.url}/studies", data=b"x", headers={"Content-Type": "multipart/related; type=\"application/dicom\""}).status_code == 400
    # Unknown service: 404.
    assert hds.http.get(f"{hds.base}/dicom/default/nothere/v2/studies").status_code == 404


def test_a_deleted_study_can_be_stored_again(hds):
    """Storing into a study that was deleted after some of its instances were stored gets the
    study a new key (the old one was destroyed with it) and stores the instance."""
    study = generate_uid()

    def instance_of_study():
        dataset = unique_copy("CT_small.dcm")
        dataset.StudyInstanceUID = study
        return dataset

    first, second, third = instance_of_study(), instance_of_study(), instance_of_study()
    assert stow(hds, [to_bytes(first)]).status_code == 200
    assert stow(hds, [to_bytes(second)]).status_code == 200
    assert hds.http.delete(f"{hds.url}/studies/{study}").status_code == 204
    assert stow(hds, [to_bytes(third)]).status_code == 200
    url = f"{hds.url}/studies/{study}/series/{third.SeriesInstanceUID}/instances/{third.SOPInstanceUID}"
    got = hds.http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert got.status_code == 200
    assert pydicom.dcmread(io.BytesIO(got.content)).SOPInstanceUID == third.SOPInstanceUID
    gone = f"{hds.url}/studies/{study}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
    assert hds.http.get(gone, headers={"Accept": "application/dicom; transfer-syntax=*"}).status_code == 404


def test_transfer_syntax_negotiation(hds):
    jpeg = unique_copy("SC_rgb_jpeg_dcmtk.dcm")
    ct = unique_copy("CT_small.dcm")
    assert stow(hds, [to_bytes(jpeg), to_bytes(ct)]).status_code == 200
    jpeg_url = f"{hds.url}/studies/{jpeg.StudyInstanceUID}/series/{jpeg.SeriesInstanceUID}/instances/{jpeg.SOPInstanceUID}"
    # Without a parameter, JPEG baseline comes back transcoded to Explicit VR Little Endian.
    transcoded = hds.http.get(jpeg_url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert transcoded.status_code == 200, transcoded.text
    assert pydicom.dcmread(io.BytesIO(multipart_parts(transcoded)[0])).file_meta.TransferSyntaxUID == EXPLICIT_LE
    # A syntax hds cannot decode is refused, naming it.
    undecodable = undecodable_copy()
    assert stow(hds, [to_bytes(undecodable)]).status_code == 200
    refused = hds.http.get(
        f"{hds.url}/studies/{undecodable.StudyInstanceUID}/series/{undecodable.SeriesInstanceUID}"
        f"/instances/{undecodable.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert refused.status_code == 406
    assert "transfer-syntax=*" in refused.text and UNDECODABLE_SYNTAX in refused.text
    as_stored = hds.http.get(jpeg_url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert as_stored.status_code == 200
    assert as_stored.content == to_bytes(jpeg)
    # Explicit VR Little Endian is returned without a parameter.
    ct_url = f"{hds.url}/studies/{ct.StudyInstanceUID}"
    plain = hds.http.get(ct_url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert plain.status_code == 200
    assert multipart_parts(plain) == [to_bytes(ct)]
    # A study-level single-part request cannot be honoured.
    assert hds.http.get(ct_url, headers={"Accept": "application/dicom"}).status_code == 406


def test_metadata_etag_and_not_modified(hds):
    ct = unique_copy("CT_small.dcm")
    assert stow(hds, [to_bytes(ct)]).status_code == 200
    url = f"{hds.url}/studies/{ct.StudyInstanceUID}/metadata"
    first = hds.http.get(url, headers={"Accept": "application/dicom+json"})
    assert first.status_code == 200
    etag = first.headers["ETag"]
    assert first.json()[0]["00100010"]["Value"][0]["Alphabetic"] == str(ct.PatientName)
    assert hds.http.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert hds.http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    assert hds.http.get(f"{hds.url}/studies/1.2.3/metadata").status_code == 404


def make_instance(patient_name, patient_id, study_date, modality="CT", study=None, series=None, **extra):
    dataset = unique_copy("CT_small.dcm")
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.StudyDate = study_date
    dataset.Modality = modality
    if study:
        dataset.StudyInstanceUID = study
    if series:
        dataset.SeriesInstanceUID = series
    for key, value in extra.items():
        setattr(dataset, key, value)
    return dataset


def test_qido_matching(hds_any_index):
    hds = hds_any_index
    web = client(hds)
    study = generate_uid()
    datasets = [
        make_instance("Müller^Jürgen", "P-1", "19991231", study=study),
        make_instance("Müller^Jürgen", "P-1", "19991231", modality="MR", study=study),
        make_instance("Smith^John^^Dr", "P-2", "20000101", AccessionNumber="ACC-7", StudyDescription="Chest CT"),
        make_instance("Doe^Jane", "P-3", "18000101", ReferringPhysicianName="House^Gregory"),
    ]
    assert stow(hds, [to_bytes(d) for d in datasets]).status_code == 200

    def study_uids(**filters):
        return {s["0020000D"]["Value"][0] for s in web.search_for_studies(search_filters=filters)}

    assert study_uids(PatientID="P-1") == {study}
    assert study_uids(**{"00100020": "P-2"}) == {datasets[2].StudyInstanceUID}
    assert study_uids(AccessionNumber="ACC-7") == {datasets[2].StudyInstanceUID}
    assert study_uids(StudyDescription="Chest CT") == {datasets[2].StudyInstanceUID}
    # Date ranges.
    assert study_uids(StudyDate="19991231-20000101") == {study, datasets[2].StudyInstanceUID}
    assert study_uids(StudyDate="-19991231") == {study, datasets[3].StudyInstanceUID}
    assert study_uids(StudyDate="20000101-") == {datasets[2].StudyInstanceUID}
    assert study_uids(StudyDate="18000101") == {datasets[3].StudyInstanceUID}
    # Fuzzy names: prefix of a name part, case and accent insensitive.
    fuzzy = {s["0020000D"]["Value"][0] for s in web.search_for_studies(search_filters={"PatientName": "mull"}, fuzzymatching=True)}
    assert fuzzy == {study}
    fuzzy = {s["0020000D"]["Value"][0] for s in web.search_for_studies(search_filters={"PatientName": "jur"}, fuzzymatching=True)}
    assert fuzzy == {study}
    assert study_uids(PatientName="mull") == set()
    assert study_uids(ReferringPhysicianName="House^Gregory") == {datasets[3].StudyInstanceUID}
    # ModalitiesInStudy and counts.
    found = web.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert sorted(found[0]["00080061"]["Value"]) == ["CT", "MR"]
    assert found[0]["00201206"]["Value"] == [2]
    assert found[0]["00201208"]["Value"] == [2]
    assert study_uids(ModalitiesInStudy="MR") == {study}
    # Series level.
    mr_series = web.search_for_series(search_filters={"Modality": "MR"})
    assert [s["0020000E"]["Value"][0] for s in mr_series] == [datasets[1].SeriesInstanceUID]
    # includefield.
    with_field = web.search_for_studies(search_filters={"PatientID": "P-2"}, fields=["PatientSex", "00100030"])
    assert "00100010" in with_field[0]
    everything = web.search_for_instances(search_filters={"SOPInstanceUID": datasets[3].SOPInstanceUID}, get_remaining=False, fields=["all"])
    assert everything[0]["00080018"]["Value"] == [datasets[3].SOPInstanceUID]
    # limit and offset page through every study exactly once.
    all_studies = [s["0020000D"]["Value"][0] for s in web.search_for_studies()]
    assert len(all_studies) == 3  # the first two instances share a study
    paged = []
    for offset in range(0, 4):
        page = hds.http.get(f"{hds.url}/studies", params={"limit": 1, "offset": offset}).json()
        paged += [s["0020000D"]["Value"][0] for s in page]
    assert paged == all_studies  # the fourth page is empty
    # Errors name the problem.
    unknown = hds.http.get(f"{hds.url}/studies", params={"BodyPartThickness": "1"})
    assert unknown.status_code == 400 and "BodyPartThickness" in unknown.text
    assert hds.http.get(f"{hds.url}/studies", params={"limit": "500"}).status_code == 400
    assert hds.http.get(f"{hds.url}/studies", params={"StudyDate": "17001231"}).status_code == 400
    assert hds.http.get(f"{hds.url}/studies", params={"SOPInstanceUID": "1.2"}).status_code == 400


def test_concurrent_stores_of_one_instance_store_it_once(hds):
    dataset = unique_copy("CT_small.dcm")
    body = to_bytes(dataset)
    statuses = []

    def store():
        statuses.append(stow(hds, [body]).status_code)

    threads = [threading.Thread(target=store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * 7
    found = client(hds).search_for_instances(search_filters={"SOPInstanceUID": dataset.SOPInstanceUID})
    assert len(found) == 1


def test_logs_hold_no_phi(hds):
    marker_id = "MARKERPID4242"
    dataset = make_instance("Markername^Secret", marker_id, "20200202")
    assert stow(hds, [to_bytes(dataset)]).status_code == 200
    web = client(hds)
    web.search_for_studies(search_filters={"PatientID": marker_id})
    web.retrieve_study_metadata(dataset.StudyInstanceUID)
    hds.http.get(f"{hds.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/metadata")
    hds.http.get(f"{hds.url}/studies", params={"PatientName": "Markername", "Bogus": marker_id})
    logs = hds.logs()
    assert "route=" in logs or "request" in logs, "request logging is expected to be on"
    for secret in (marker_id, "Markername", dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID):
        assert secret not in logs, f"PHI in logs: {secret[:4]}..."


def test_data_plane_requires_a_token_for_the_dicom_audience(hds):
    anonymous = requests.get(f"{hds.url}/studies")
    assert anonymous.status_code == 401
    challenge = anonymous.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and "dicom.healthcareapis.azure.com" in challenge
    # A token for another audience is refused.
    wrong = requests.get(f"{hds.url}/studies", headers={"Authorization": f"Bearer {hds.token('https://management.azure.com')}"})
    assert wrong.status_code == 401
    tampered = hds.token()[:-4] + "AAAA"
    assert requests.get(f"{hds.url}/studies", headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    assert hds.http.get(f"{hds.url}/studies").status_code == 200
