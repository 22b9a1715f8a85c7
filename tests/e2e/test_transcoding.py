"""WADO-RS transcoding on a real `hds up`: an instance stored compressed (or in another native
syntax) comes back in Explicit VR Little Endian when the client names no transfer syntax or
names that one. Lossless sources must give exactly the pixels of their uncompressed twin
(pydicom ships the same image in several syntaxes, so no codec is needed on this side to
check); lossy ones the size and samples pydicom's own decoder finds, within a PSNR bound.

A client may also ask for JPEG 2000 (.90, .91: hds encodes losslessly) or JPEG Baseline (.50,
8-bit samples only), for instances, series, studies and frames (`image/jp2`, `image/jpeg`,
or `application/octet-stream` with the syntax): hds's output is decoded here by pydicom and
Pillow (Pillow's OpenJPEG and libjpeg), exact for JPEG 2000, within a PSNR bound for JPEG."""

import io

import numpy
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from conftest import store
from test_dicomweb import EXPLICIT_LE, UNDECODABLE_SYNTAX, multipart_parts, undecodable_copy, unique_copy

NO_PARAMETER = 'multipart/related; type="application/dicom"'
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
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
    undecodable = undecodable_copy()
    store(hds, undecodable)
    single = hds.http.get(instance_url(hds, undecodable), headers={"Accept": "application/dicom"})
    assert single.status_code == 406
    assert UNDECODABLE_SYNTAX in single.text and "transfer-syntax=*" in single.text
    as_stored = hds.http.get(instance_url(hds, undecodable), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert as_stored.status_code == 200
    # A target hds does not produce (JPEG-LS) is a 406 naming the stored syntax and the targets.
    plain = unique_copy("MR_small.dcm")
    store(hds, plain)
    other = hds.http.get(instance_url(hds, plain),
                         headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.80"})
    assert other.status_code == 406
    assert EXPLICIT_LE in other.text and JPEG_2000_LOSSLESS in other.text and JPEG_BASELINE in other.text


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
    undecodable = undecodable_copy()
    store(hds, undecodable)
    response = hds.http.get(f"{instance_url(hds, undecodable)}/frames/1",
                            headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 406
    assert UNDECODABLE_SYNTAX in response.text


def test_jpeg_extended_12_bit_transcodes_to_what_pylibjpeg_decodes(hds):
    """JPEG Extended with 12-bit samples, decoded by libjpeg-turbo in hds and by pylibjpeg
    (Thomas Richter's libjpeg) in pydicom: the same image within the rounding of two 12-bit
    inverse DCTs, as an instance in Explicit VR Little Endian, as native frames and as
    lossless JPEG 2000."""
    dataset = unique_copy("JPGExtended.dcm")
    store(hds, dataset)
    reference = unique_copy("JPGExtended.dcm").pixel_array.astype(numpy.int32)
    native = retrieved_single(hds, dataset, EXPLICIT_LE)
    assert native.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (native.BitsAllocated, native.BitsStored) == (16, 12)
    got = native.pixel_array.astype(numpy.int32)
    assert numpy.abs(got - reference).max() <= 2, numpy.abs(got - reference).max()
    frame = hds.http.get(f"{instance_url(hds, dataset)}/frames/1", headers={"Accept": "application/octet-stream"})
    assert frame.status_code == 200
    assert frame.content == native.PixelData
    j2k = retrieved_single(hds, dataset, JPEG_2000_LOSSLESS)
    assert numpy.array_equal(j2k.pixel_array.astype(numpy.int32), got)


def psnr(got, reference, bits):
    got = numpy.asarray(got, dtype=numpy.float64)
    reference = numpy.asarray(reference, dtype=numpy.float64)
    assert got.shape == reference.shape
    error = numpy.mean((got - reference) ** 2)
    peak = float(2 ** bits - 1)
    return float("inf") if error == 0 else 10 * numpy.log10(peak * peak / error)


def retrieved_single(server, dataset, syntax):
    response = server.http.get(instance_url(server, dataset),
                               headers={"Accept": f"application/dicom; transfer-syntax={syntax}"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == f"application/dicom; transfer-syntax={syntax}"
    returned = pydicom.dcmread(io.BytesIO(response.content))
    assert returned.file_meta.TransferSyntaxUID == syntax
    assert returned.SOPInstanceUID == dataset.SOPInstanceUID
    return returned


# Signed and unsigned 16-bit, 8-bit RGB, RLE sources, two frames, and a JPEG 2000 source.
JPEG_2000_SOURCES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb.dcm",
                     "SC_rgb_small_odd.dcm", "SC_rgb_rle_2frame.dcm", "US1_J2KR.dcm",
                     "examples_palette.dcm"]


@pytest.mark.parametrize("stored", JPEG_2000_SOURCES)
@pytest.mark.parametrize("syntax", [JPEG_2000_LOSSLESS, JPEG_2000])
def test_jpeg_2000_on_request_decodes_to_exactly_the_stored_pixels(hds, stored, syntax):
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = retrieved_single(hds, dataset, syntax)
    assert returned.PatientName == dataset.PatientName
    if dataset.file_meta.TransferSyntaxUID == syntax:
        # Already stored so: returned as stored, byte for byte the same pixel data.
        assert returned.PixelData == dataset.PixelData
    expected = dataset.pixel_array
    got = returned.pixel_array
    assert got.dtype.kind == expected.dtype.kind, (got.dtype, expected.dtype)
    assert numpy.array_equal(got, expected), stored


def test_jpeg_2000_for_a_study_of_mixed_syntaxes_in_one_multipart_response(hds):
    plain = unique_copy("MR_small.dcm")
    rle = unique_copy("MR_small_RLE.dcm")
    rle.StudyInstanceUID = plain.StudyInstanceUID
    rle.SeriesInstanceUID = plain.SeriesInstanceUID
    store(hds, plain)
    store(hds, rle)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_2000_LOSSLESS}'
    for url in (f"{hds.url}/studies/{plain.StudyInstanceUID}",
                f"{hds.url}/studies/{plain.StudyInstanceUID}/series/{plain.SeriesInstanceUID}"):
        response = hds.http.get(url, headers={"Accept": accept})
        assert response.status_code == 200, response.text
        assert response.content.count(f"transfer-syntax={JPEG_2000_LOSSLESS}".encode()) == 2
        parts = [pydicom.dcmread(io.BytesIO(part)) for part in multipart_parts(response)]
        assert len(parts) == 2
        for part in parts:
            assert part.file_meta.TransferSyntaxUID == JPEG_2000_LOSSLESS
            assert numpy.array_equal(part.pixel_array, plain.pixel_array)


@pytest.mark.parametrize("stored", ["SC_rgb.dcm", "SC_rgb_rle_2frame.dcm", "vlut_04.dcm"])
def test_jpeg_baseline_on_request_is_close_to_the_stored_pixels(hds, stored):
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = retrieved_single(hds, dataset, JPEG_BASELINE)
    assert returned.LossyImageCompression == "01"
    assert (returned.Rows, returned.Columns) == (dataset.Rows, dataset.Columns)
    assert int(getattr(returned, "NumberOfFrames", 1) or 1) == int(getattr(dataset, "NumberOfFrames", 1) or 1)
    reference = dataset.pixel_array
    got = returned.pixel_array  # pydicom decodes YBR_FULL_422 JPEG to RGB
    assert psnr(got, reference, 8) > 30, stored
    # Multipart too.
    response = hds.http.get(instance_url(hds, dataset), headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'})
    assert response.status_code == 200
    part = pydicom.dcmread(io.BytesIO(multipart_parts(response)[0]))
    assert part.file_meta.TransferSyntaxUID == JPEG_BASELINE


def frames_url(server, dataset, numbers):
    return f"{instance_url(server, dataset)}/frames/{','.join(str(n) for n in numbers)}"


def part_types(response):
    return [line.split(b":", 1)[1].strip().decode() for line in response.content.split(b"\r\n")
            if line.lower().startswith(b"content-type:")]


def test_frames_as_jpeg_2000_images_decode_exactly(hds):
    from PIL import Image

    dataset = unique_copy("SC_rgb_rle_2frame.dcm")
    store(hds, dataset)
    expected = unique_copy("SC_rgb_2frame.dcm").pixel_array
    for accept, part_type in (
        ('multipart/related; type="image/jp2"', f"image/jp2; transfer-syntax={JPEG_2000_LOSSLESS}"),
        (f'multipart/related; type="image/jp2"; transfer-syntax={JPEG_2000}', f"image/jp2; transfer-syntax={JPEG_2000}"),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG_2000_LOSSLESS}',
         f"application/octet-stream; transfer-syntax={JPEG_2000_LOSSLESS}"),
    ):
        response = hds.http.get(frames_url(hds, dataset, [2, 1]), headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["Content-Type"].startswith(f'multipart/related; type="{part_type.split(";")[0]}"')
        assert part_types(response) == [part_type, part_type]
        parts = multipart_parts(response)
        assert len(parts) == 2
        for number, part in zip([2, 1], parts):
            decoded = numpy.asarray(Image.open(io.BytesIO(part)))
            assert numpy.array_equal(decoded, expected[number - 1]), (accept, number)
    # One frame, one part.
    single = hds.http.get(frames_url(hds, dataset, [1]), headers={"Accept": "image/jp2"})
    assert single.status_code == 200
    assert single.headers["Content-Type"] == f"image/jp2; transfer-syntax={JPEG_2000_LOSSLESS}"
    assert numpy.array_equal(numpy.asarray(Image.open(io.BytesIO(single.content))), expected[0])


def test_frames_of_a_signed_ct_as_jpeg_2000_decode_exactly(hds):
    dataset = unique_copy("CT_small.dcm")
    store(hds, dataset)
    response = hds.http.get(frames_url(hds, dataset, [1]),
                            headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert response.status_code == 200, response.text
    codestream = multipart_parts(response)[0]
    # Wrapped in a data set of the source's attributes and decoded by pydicom as pixel data.
    wrapped = unique_copy("CT_small.dcm")
    from pydicom.encaps import encapsulate

    wrapped.PixelData = encapsulate([codestream])
    wrapped.file_meta.TransferSyntaxUID = JPEG_2000_LOSSLESS
    assert numpy.array_equal(wrapped.pixel_array, dataset.pixel_array)


def test_frames_as_jpeg_images_are_close(hds):
    from PIL import Image

    dataset = unique_copy("SC_rgb_rle_2frame.dcm")
    store(hds, dataset)
    expected = unique_copy("SC_rgb_2frame.dcm").pixel_array
    response = hds.http.get(frames_url(hds, dataset, [1, 2]), headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert response.status_code == 200, response.text
    assert part_types(response) == [f"image/jpeg; transfer-syntax={JPEG_BASELINE}"] * 2
    for number, part in enumerate(multipart_parts(response)):
        decoded = numpy.asarray(Image.open(io.BytesIO(part)).convert("RGB"))
        assert psnr(decoded, expected[number], 8) > 30
    # A JPEG stored as JPEG Baseline is returned as stored.
    stored_jpeg = unique_copy("SC_rgb_jpeg_dcmtk.dcm")
    store(hds, stored_jpeg)
    as_stored = hds.http.get(frames_url(hds, stored_jpeg, [1]), headers={"Accept": "image/jpeg"})
    assert as_stored.status_code == 200
    from pydicom.encaps import generate_frames

    assert as_stored.content == next(generate_frames(stored_jpeg.PixelData, number_of_frames=1))


def test_what_a_target_cannot_hold_is_a_406_naming_the_stored_syntax_and_the_offer(hds):
    sixteen_bit = unique_copy("MR_small.dcm")
    store(hds, sixteen_bit)
    for url, accept in (
        (instance_url(hds, sixteen_bit), f"application/dicom; transfer-syntax={JPEG_BASELINE}"),
        (instance_url(hds, sixteen_bit), f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'),
        (f"{hds.url}/studies/{sixteen_bit.StudyInstanceUID}", f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'),
        (frames_url(hds, sixteen_bit, [1]), "image/jpeg"),
        (frames_url(hds, sixteen_bit, [1]), 'multipart/related; type="image/jpeg"'),
    ):
        response = hds.http.get(url, headers={"Accept": accept})
        assert response.status_code == 406, (accept, response.status_code)
        text = response.text
        assert EXPLICIT_LE in text and JPEG_BASELINE in text and JPEG_2000_LOSSLESS in text, text
        assert "8-bit" in text, text
    # A source hds cannot decode, asked as JPEG 2000: the 406 names it.
    undecodable = undecodable_copy()
    store(hds, undecodable)
    for url, accept in (
        (instance_url(hds, undecodable), f"application/dicom; transfer-syntax={JPEG_2000_LOSSLESS}"),
        (frames_url(hds, undecodable, [1]), 'multipart/related; type="image/jp2"'),
    ):
        response = hds.http.get(url, headers={"Accept": accept})
        assert response.status_code == 406, accept
        assert UNDECODABLE_SYNTAX in response.text and JPEG_2000_LOSSLESS in response.text
    # image/jp2 carries JPEG 2000 only.
    wrong = hds.http.get(frames_url(hds, sixteen_bit, [1]),
                         headers={"Accept": f'multipart/related; type="image/jp2"; transfer-syntax={JPEG_BASELINE}'})
    assert wrong.status_code == 406
    assert "image/jp2" in wrong.text


def test_a_series_with_one_instance_that_cannot_be_transcoded_is_a_clean_406(hds):
    """Every instance of a multi-instance response is checked from its stored header before the
    status line: a later instance the target cannot hold makes the whole request a 406 (as Azure
    refuses a multi-instance request it will not transcode), never a body cut at that instance.
    """
    eight_bit = unique_copy("SC_rgb.dcm")  # 8-bit RGB: JPEG Baseline can hold it
    sixteen_bit = unique_copy("MR_small.dcm")  # 16-bit: it cannot
    palette = unique_copy("OBXXXX1A.dcm")  # 8-bit PALETTE COLOR: nor this (lossy indices)
    for later in (sixteen_bit, palette):
        later.StudyInstanceUID = eight_bit.StudyInstanceUID
        later.SeriesInstanceUID = eight_bit.SeriesInstanceUID
    store(hds, eight_bit)  # stored first, so it is the response's first part
    store(hds, sixteen_bit)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    series = f"{hds.url}/studies/{eight_bit.StudyInstanceUID}/series/{eight_bit.SeriesInstanceUID}"
    for url in (f"{hds.url}/studies/{eight_bit.StudyInstanceUID}", series):
        response = hds.http.get(url, headers={"Accept": accept})
        assert response.status_code == 406, (url, response.status_code)
        text = response.text
        assert "instance 2 of the 2" in text, text
        assert EXPLICIT_LE in text and JPEG_BASELINE in text and "8-bit" in text, text
        assert "transfer-syntax=*" in text, text
    # As stored, and to a target every instance fits, the same series comes back whole.
    as_stored = hds.http.get(series, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert as_stored.status_code == 200
    assert len(multipart_parts(as_stored)) == 2
    to_j2k = hds.http.get(series, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_2000_LOSSLESS}'})
    assert to_j2k.status_code == 200, to_j2k.text
    assert len(multipart_parts(to_j2k)) == 2
    # A palette instance: JPEG 2000 keeps its indices, JPEG Baseline would not.
    store(hds, palette)
    response = hds.http.get(series, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_2000_LOSSLESS}'})
    assert response.status_code == 200, response.text
    assert len(multipart_parts(response)) == 3
    response = hds.http.get(series, headers={"Accept": accept})
    assert response.status_code == 406
    assert "instance 2 of the 3" in response.text  # the first refused one is named


def test_a_series_with_a_source_hds_cannot_decode_is_a_406_naming_it(hds):
    plain = unique_copy("MR_small.dcm")
    undecodable = undecodable_copy()
    undecodable.StudyInstanceUID = plain.StudyInstanceUID
    undecodable.SeriesInstanceUID = plain.SeriesInstanceUID
    store(hds, plain)
    store(hds, undecodable)
    response = hds.http.get(f"{hds.url}/studies/{plain.StudyInstanceUID}", headers={"Accept": NO_PARAMETER})
    assert response.status_code == 406
    assert UNDECODABLE_SYNTAX in response.text and "transfer-syntax=*" in response.text


HTJ2K_SYNTAXES = ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"]


def htj2k_copy(name, syntax):
    """`name` with fresh UIDs, its pixels encoded losslessly as HTJ2K by OpenJPH's
    `ojph_compress` (apt `openjph-tools`, installed by scripts/test-setup; pydicom's data has
    no HTJ2K file), in RPCL order (which all three HTJ2K syntaxes allow), without a colour
    transform (RGB stays RGB). Returns the dataset and the pixels it must decode to."""
    import pathlib
    import shutil
    import subprocess
    import tempfile

    from pydicom.encaps import encapsulate

    encoder = shutil.which("ojph_compress")
    assert encoder, "ojph_compress is missing: run scripts/test-setup (apt package openjph-tools)"
    dataset = unique_copy(name)
    pixels = dataset.pixel_array
    components = int(dataset.SamplesPerPixel)
    signed = int(dataset.PixelRepresentation) == 1
    planes = pixels if components == 1 else numpy.moveaxis(pixels, -1, 0)  # raw input is planar
    dtype = {(8, False): "u1", (8, True): "i1", (16, False): "<u2", (16, True): "<i2"}[
        (int(dataset.BitsAllocated), signed)]
    with tempfile.TemporaryDirectory() as directory:
        raw, codestream = pathlib.Path(directory, "in.yuv"), pathlib.Path(directory, "out.j2c")
        numpy.ascontiguousarray(planes).astype(dtype).tofile(raw)
        subprocess.run([
            encoder, "-i", str(raw), "-o", str(codestream), "-reversible", "true",
            "-prog_order", "RPCL",  # raw input: no colour transform (it refuses one)
            "-dims", f"{{{int(dataset.Columns)},{int(dataset.Rows)}}}",
            "-num_comps", str(components),
            "-signed", ",".join(["true" if signed else "false"] * components),
            "-bit_depth", ",".join([str(int(dataset.BitsStored))] * components),
            "-downsamp", ",".join(["{1,1}"] * components),
        ], check=True, capture_output=True)
        encoded = codestream.read_bytes()
    assert encoded[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: a raw codestream
    dataset.PixelData = encapsulate([encoded])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = syntax
    if components == 3:
        dataset.PlanarConfiguration = 0
    return dataset, pixels


@pytest.mark.parametrize("syntax", HTJ2K_SYNTAXES)
@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb.dcm"])  # signed 16-bit; 8-bit RGB
def test_htj2k_sources_come_back_with_their_exact_pixels(hds, name, syntax):
    dataset, pixels = htj2k_copy(name, syntax)
    store(hds, dataset)
    returned = transcoded(hds, dataset, NO_PARAMETER)
    assert numpy.array_equal(returned.pixel_array, pixels), (name, syntax)
    # Frames too, as native samples, and JPEG 2000 on request.
    frame = hds.http.get(f"{instance_url(hds, dataset)}/frames/1",
                         headers={"Accept": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"})
    assert frame.status_code == 200, frame.text
    assert frame.content == numpy.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    j2k = hds.http.get(instance_url(hds, dataset),
                       headers={"Accept": f"application/dicom; transfer-syntax={JPEG_2000_LOSSLESS}"})
    assert j2k.status_code == 200, j2k.text
    assert numpy.array_equal(pydicom.dcmread(io.BytesIO(j2k.content)).pixel_array, pixels)


@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb.dcm"])
def test_htj2k_renders_as_its_uncompressed_twin(hds, name):
    """Lossless HTJ2K decodes to the twin's samples, so the rendered images are the same."""
    dataset, _ = htj2k_copy(name, HTJ2K_SYNTAXES[0])
    twin = unique_copy(name)
    store(hds, dataset)
    store(hds, twin)
    from PIL import Image

    images = []
    for instance in (dataset, twin):
        response = hds.http.get(f"{instance_url(hds, instance)}/rendered", headers={"Accept": "image/png"})
        assert response.status_code == 200, response.text
        images.append(numpy.asarray(Image.open(io.BytesIO(response.content))))
    assert numpy.array_equal(images[0], images[1]), name


JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"


@pytest.mark.parametrize("stored, twin", [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # signed 16-bit
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # 12 bits stored, 10 frames
])
def test_jpeg_ls_lossless_sources_come_back_with_their_exact_pixels(hds, stored, twin):
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = transcoded(hds, dataset, NO_PARAMETER)
    assert numpy.array_equal(returned.pixel_array, unique_copy(twin).pixel_array), stored
    # And rendered, as its twin renders (the same samples through the same pipeline).
    twin_copy = unique_copy(twin)
    store(hds, twin_copy)
    from PIL import Image

    images = []
    for instance in (dataset, twin_copy):
        response = hds.http.get(f"{instance_url(hds, instance)}/rendered", headers={"Accept": "image/png"})
        assert response.status_code == 200, response.text
        images.append(numpy.asarray(Image.open(io.BytesIO(response.content))))
    assert numpy.array_equal(images[0], images[1]), stored


@pytest.mark.parametrize("near", [1, 3])
@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb.dcm"])
def test_jpeg_ls_near_lossless_comes_back_within_its_near_bound(hds, name, near):
    """Near-lossless JPEG-LS guarantees every sample within NEAR of the original: the original's
    pixels, encoded here by CharLS (pyjpegls) with that NEAR, stored, and retrieved as Explicit VR
    Little Endian, are within it."""
    import jpeg_ls
    from pydicom.encaps import encapsulate

    dataset = unique_copy(name)
    original = dataset.pixel_array
    if original.dtype == numpy.int16:  # JPEG-LS codes unsigned samples: shift into range
        original = (original.astype(numpy.int32) + 32768).astype(numpy.uint16)
        dataset.PixelRepresentation = 0
    codestream = bytes(jpeg_ls.encode_array(original, lossy_error=near))
    dataset.PixelData = encapsulate([codestream])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG_LS_NEAR_LOSSLESS
    dataset.LossyImageCompression = "01"
    store(hds, dataset)
    returned = transcoded(hds, dataset, NO_PARAMETER)
    got = returned.pixel_array.astype(numpy.int64)
    error = numpy.abs(got - original.astype(numpy.int64))
    assert error.max() <= near, (name, near, error.max())


@pytest.mark.parametrize("stored", ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
                                    "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"])
def test_jpeg_ls_near_lossless_files_decode_as_charls_decodes_them(hds, stored):
    """pydicom's near-lossless files have no uncompressed twin: CharLS's own decoding of the
    stored codestream (pyjpegls, as pydicom uses it) is the reference, exactly."""
    dataset = unique_copy(stored)
    store(hds, dataset)
    returned = transcoded(hds, dataset, NO_PARAMETER)
    assert numpy.array_equal(returned.pixel_array, dataset.pixel_array), stored
