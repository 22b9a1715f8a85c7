"""WADO-RS transcoding on a real `hds up`: an instance stored compressed (or in another native
syntax) comes back in Explicit VR Little Endian when the client names no transfer syntax or
names that one. Lossless sources must give exactly the pixels of their uncompressed twin
(pydicom ships the same image in several syntaxes, so no codec is needed on this side to
check); lossy ones the size and samples pydicom's own decoder finds, within a PSNR bound."""

import io

import numpy
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from conftest import store
from test_dicomweb import EXPLICIT_LE, multipart_parts, unique_copy

NO_PARAMETER = 'multipart/related; type="application/dicom"'
ASKED_FOR = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'


def instance_url(server, dataset):
    return (f"{server.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
            f"/instances/{dataset.SOPInstanceUID}")


def transcoded(server, dataset, accept):
    response = server.http.get(instance_url(server, dataset), headers={"Accept": accept})
    assert response.status_code == 200, response.text
    head = response.content.split(b"\r\n\r\n", 1)[0]
    assert f"transfer-syntax={EXPLICIT_LE}".encode() in head
    returned = pydicom.dcmread(io.BytesIO(multipart_parts(response)[0]))
    assert returned.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert returned.SOPInstanceUID == dataset.SOPInstanceUID
    return returned


# (stored file, its uncompressed twin)
LOSSLESS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("SC_rgb_rle_2frame.dcm", "SC_rgb_2frame.dcm"),
]


@pytest.mark.parametrize("stored, twin", LOSSLESS)
@pytest.mark.parametrize("accept", [NO_PARAMETER, ASKED_FOR])
def test_lossless_sources_come_back_with_their_exact_pixels(hds, stored, twin, accept):
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = transcoded(hds, dataset, accept)
    expected = unique_copy(twin).pixel_array
    assert numpy.array_equal(returned.pixel_array, expected), stored
    assert returned.PatientName == dataset.PatientName


@pytest.mark.parametrize("stored", ["JPEG2000.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"])
def test_lossy_sources_come_back_decoded_close_to_pydicom(hds, stored):
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = transcoded(hds, dataset, NO_PARAMETER)
    assert (returned.Rows, returned.Columns) == (dataset.Rows, dataset.Columns)
    got = returned.pixel_array.astype(numpy.float64)
    reference = dataset.pixel_array.astype(numpy.float64)  # pydicom's own decoder (Pillow)
    if returned.PhotometricInterpretation != dataset.PhotometricInterpretation:
        from pydicom.pixels import convert_color_space

        reference = convert_color_space(dataset.pixel_array, dataset.PhotometricInterpretation,
                                        returned.PhotometricInterpretation).astype(numpy.float64)
    assert got.shape == reference.shape
    peak = float(2 ** int(dataset.BitsStored) - 1)
    error = numpy.mean((got - reference) ** 2)
    psnr = float("inf") if error == 0 else 10 * numpy.log10(peak * peak / error)
    assert psnr > 40, psnr


def test_a_study_of_mixed_syntaxes_comes_back_all_explicit_little_endian(hds):
    plain = unique_copy("MR_small.dcm")
    rle = unique_copy("MR_small_RLE.dcm")
    rle.StudyInstanceUID = plain.StudyInstanceUID
    store(hds, plain)
    store(hds, rle)
    response = hds.http.get(f"{hds.url}/studies/{plain.StudyInstanceUID}", headers={"Accept": NO_PARAMETER})
    assert response.status_code == 200, response.text
    parts = [pydicom.dcmread(io.BytesIO(part)) for part in multipart_parts(response)]
    assert sorted(part.SOPInstanceUID for part in parts) == sorted([plain.SOPInstanceUID, rle.SOPInstanceUID])
    assert all(part.file_meta.TransferSyntaxUID == EXPLICIT_LE for part in parts)
    assert numpy.array_equal(parts[0].pixel_array, parts[1].pixel_array)


def test_dicomweb_client_reads_a_jpeg_2000_instance_without_a_codec(hds):
    dataset = unique_copy("MR_small_jp2klossless.dcm")
    store(hds, dataset)
    web = DICOMwebClient(url=hds.url, headers={"Authorization": f"Bearer {hds.token()}"})
    # dicomweb-client asks for the stored syntax (transfer-syntax=*) unless told: told here.
    returned = web.retrieve_instance(dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID,
                                     media_types=(("application/dicom", EXPLICIT_LE),))
    assert returned.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert numpy.array_equal(returned.pixel_array, unique_copy("MR_small.dcm").pixel_array)


def test_what_cannot_be_transcoded_is_a_406_that_says_what_to_ask(hds):
    twelve_bit = unique_copy("JPEG-lossy.dcm")  # JPEG Extended, 12-bit samples
    store(hds, twelve_bit)
    single = hds.http.get(instance_url(hds, twelve_bit), headers={"Accept": "application/dicom"})
    assert single.status_code == 406
    assert "1.2.840.10008.1.2.4.51" in single.text and "transfer-syntax=*" in single.text
    as_stored = hds.http.get(instance_url(hds, twelve_bit), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert as_stored.status_code == 200
    # Only Explicit VR Little Endian is a target.
    plain = unique_copy("MR_small.dcm")
    store(hds, plain)
    other = hds.http.get(instance_url(hds, plain),
                         headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert other.status_code == 406
    assert EXPLICIT_LE in other.text


@pytest.mark.parametrize("stored, twin", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("SC_rgb_rle_2frame.dcm", "SC_rgb_2frame.dcm"),
])
def test_frames_of_compressed_instances_come_back_as_native_samples(hds, stored, twin):
    dataset = unique_copy(stored)
    store(hds, dataset)
    expected = unique_copy(twin)
    frames = int(getattr(expected, "NumberOfFrames", 1) or 1)
    frame_len = len(expected.PixelData) // frames
    url = f"{instance_url(hds, dataset)}/frames/{','.join(str(n) for n in range(1, frames + 1))}"
    for accept in ('multipart/related; type="application/octet-stream"',
                   f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}'):
        response = hds.http.get(url, headers={"Accept": accept})
        assert response.status_code == 200, (stored, response.text)
        parts = multipart_parts(response)
        assert len(parts) == frames
        for number, part in enumerate(parts):
            # Native little-endian samples, exactly those of the uncompressed twin.
            assert part == expected.PixelData[number * frame_len:(number + 1) * frame_len], (stored, number)
    # As stored on request; and a single frame as a single part.
    as_stored = hds.http.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert as_stored.status_code == 200
    single = hds.http.get(f"{instance_url(hds, dataset)}/frames/1", headers={"Accept": "application/octet-stream"})
    assert single.status_code == 200
    assert single.content == expected.PixelData[:frame_len]
    missing = hds.http.get(f"{instance_url(hds, dataset)}/frames/{frames + 1}", headers={"Accept": "application/octet-stream"})
    assert missing.status_code == 404


def test_frames_that_cannot_be_transcoded_are_a_406_naming_the_syntax(hds):
    twelve_bit = unique_copy("JPEG-lossy.dcm")
    store(hds, twelve_bit)
    response = hds.http.get(f"{instance_url(hds, twelve_bit)}/frames/1",
                            headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.51" in response.text
