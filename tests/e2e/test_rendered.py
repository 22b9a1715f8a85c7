"""Rendered resources on a real `hds up`, on pydicom's own files: each instance or frame comes
back as a PNG or JPEG that Pillow decodes, at the instance's size (or fitted to a viewport),
and its pixels match the display pipeline computed here from pydicom's decoding: the modality
LUT, the first stored window (PS3.3 C.11.2.1.2.1, linear) or a min-max normalization when there
is none, MONOCHROME1 inverted. Compressed files are compared with their uncompressed twins
(pydicom ships the same image in several transfer syntaxes), so the comparison needs no codec
on this side."""

import io

import numpy
import pytest
from PIL import Image

from conftest import store
from test_dicomweb import UNDECODABLE_SYNTAX, undecodable_copy, unique_copy

from pydicom.pixels import apply_modality_lut


def reference_rendering(dataset, frame=1):
    """The 8-bit image a viewer shows for `frame` (from 1) of `dataset`, computed with numpy."""
    pixels = dataset.pixel_array
    if int(getattr(dataset, "NumberOfFrames", 1)) > 1:
        pixels = pixels[frame - 1]
    if dataset.PhotometricInterpretation == "RGB":
        return pixels.astype(numpy.float64)
    values = apply_modality_lut(pixels, dataset).astype(numpy.float64)
    if "WindowCenter" in dataset:
        center = dataset.WindowCenter
        width = dataset.WindowWidth
        center = float(center[0] if isinstance(center, pydicom_multi()) else center)
        width = float(width[0] if isinstance(width, pydicom_multi()) else width)
        low = center - 0.5 - (width - 1) / 2
        high = center - 0.5 + (width - 1) / 2
        scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
        rendered = numpy.where(values <= low, 0, numpy.where(values > high, 255, scaled))
    else:
        lowest, highest = values.min(), values.max()
        rendered = (values - lowest) / max(highest - lowest, 1e-9) * 255
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        rendered = 255 - rendered
    return rendered


def pydicom_multi():
    from pydicom.multival import MultiValue

    return MultiValue


def rendered_url(server, dataset, frame=None):
    base = (f"{server.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
            f"/instances/{dataset.SOPInstanceUID}")
    return f"{base}/rendered" if frame is None else f"{base}/frames/{frame}/rendered"


def fetch_image(server, url, accept="image/png", **parameters):
    response = server.http.get(url, params=parameters, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return response, Image.open(io.BytesIO(response.content))


# (stored file, the uncompressed file its pixels are compared with, frame)
LOSSLESS_CASES = [
    ("CT_small.dcm", "CT_small.dcm", None),  # 16-bit signed CT, rescale, no window: normalized
    ("MR_small.dcm", "MR_small.dcm", None),  # stored window
    ("MR_small_RLE.dcm", "MR_small.dcm", None),  # RLE Lossless
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", None),  # JPEG 2000 lossless
    ("SC_rgb.dcm", "SC_rgb.dcm", None),  # RGB
    ("SC_rgb_rle.dcm", "SC_rgb.dcm", None),  # RGB in RLE
    ("RG1_UNCR.dcm", "RG1_UNCR.dcm", None),  # MONOCHROME1 radiograph with a window
    ("emri_small.dcm", "emri_small.dcm", 3),  # a frame of a multi-frame MR
]


@pytest.mark.parametrize("stored, twin, frame", LOSSLESS_CASES)
def test_png_renderings_match_the_display_pipeline(hds, stored, twin, frame):
    dataset = unique_copy(stored)
    store(hds, dataset)
    _, image = fetch_image(hds, rendered_url(hds, dataset, frame))
    assert image.format == "PNG"
    reference = reference_rendering(unique_copy(twin), frame or 1)
    assert image.size == (reference.shape[1], reference.shape[0])
    got = numpy.asarray(image.convert("RGB" if reference.ndim == 3 else "L"), dtype=numpy.float64)
    difference = numpy.abs(got - reference)
    assert difference.max() <= 2, f"largest difference {difference.max()}"
    assert difference.mean() <= 0.6, f"mean difference {difference.mean()}"
    assert got.std() > 5, "a blank image"


@pytest.mark.parametrize("stored", ["JPEG2000.dcm", "JPEG-LL.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
                                    "MR2_J2KR.dcm", "US1_UNCR.dcm"])
def test_every_listed_syntax_renders_as_jpeg_at_its_size(hds, stored):
    dataset = unique_copy(stored)
    store(hds, dataset)
    response, image = fetch_image(hds, rendered_url(hds, dataset), accept="image/jpeg", quality=80)
    assert response.headers["Content-Type"] == "image/jpeg"
    assert image.format == "JPEG"
    assert image.size == (dataset.Columns, dataset.Rows)
    assert numpy.asarray(image.convert("L"), dtype=numpy.float64).std() > 5, "a blank image"


def test_a_syntax_the_decoders_lack_is_a_406_that_names_it(hds):
    dataset = undecodable_copy()
    store(hds, dataset)
    response = hds.http.get(rendered_url(hds, dataset), headers={"Accept": "image/jpeg"})
    assert response.status_code == 406, response.text
    assert UNDECODABLE_SYNTAX in response.json()["error"]["message"]


def test_jpeg_extended_12_bit_renders_with_its_window(hds):
    """JPEG Extended with 12-bit samples (libjpeg-turbo decodes it): the rendered PNG matches
    pydicom's windowed rendering of pylibjpeg's decoding."""
    dataset = unique_copy("JPGExtended.dcm")
    store(hds, dataset)
    _, image = fetch_image(hds, rendered_url(hds, dataset))
    assert image.size == (dataset.Columns, dataset.Rows)
    expected = reference_rendering(unique_copy("JPGExtended.dcm"))
    got = numpy.asarray(image.convert("L"), dtype=numpy.float64)
    difference = numpy.abs(got - expected)
    assert difference.mean() < 1.5 and numpy.percentile(difference, 99) <= 4, difference.mean()
    assert got.std() > 5, "a blank image"
    # The damaged copy pydicom also ships (its scan header claims spectral selection) is a 406
    # naming the syntax, as pylibjpeg refuses it.
    damaged = unique_copy("JPEG-lossy.dcm")
    store(hds, damaged)
    response = hds.http.get(rendered_url(hds, damaged), headers={"Accept": "image/png"})
    assert response.status_code == 406, response.text
    assert "1.2.840.10008.1.2.4.51" in response.json()["error"]["message"]


def test_jpeg_is_the_default_and_close_to_the_png(hds):
    dataset = unique_copy("MR_small.dcm")
    store(hds, dataset)
    response, jpeg = fetch_image(hds, rendered_url(hds, dataset), accept="*/*")
    assert response.headers["Content-Type"] == "image/jpeg"
    _, png = fetch_image(hds, rendered_url(hds, dataset))
    difference = numpy.abs(numpy.asarray(jpeg.convert("L"), dtype=float) - numpy.asarray(png, dtype=float))
    assert difference.mean() < 4, difference.mean()
    small = hds.http.get(rendered_url(hds, dataset), params={"quality": 5}, headers={"Accept": "image/jpeg"})
    assert small.status_code == 200
    assert len(small.content) < len(response.content), "quality does not change the encoding"


def test_viewports_and_thumbnails_fit_and_keep_the_aspect_ratio(hds):
    dataset = unique_copy("JPEG2000.dcm")  # 1024 rows x 256 columns
    store(hds, dataset)
    _, image = fetch_image(hds, rendered_url(hds, dataset), viewport="100,100")
    assert image.size == (25, 100)
    for url in (f"{hds.url}/studies/{dataset.StudyInstanceUID}/thumbnail",
                f"{hds.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/thumbnail",
                rendered_url(hds, dataset).replace("/rendered", "/thumbnail")):
        _, thumbnail = fetch_image(hds, url)
        assert thumbnail.size == (50, 200), url
    _, sized = fetch_image(hds, f"{hds.url}/studies/{dataset.StudyInstanceUID}/thumbnail", viewport="64,64")
    assert max(sized.size) == 64


def test_hostile_or_impossible_requests_get_clear_errors(hds):
    dataset = unique_copy("emri_small.dcm")  # 10 frames
    store(hds, dataset)
    plan = unique_copy("rtplan.dcm")  # no pixel data
    store(hds, plan)
    cases = [
        (rendered_url(hds, dataset, 0), {}, "image/png", 400),
        (rendered_url(hds, dataset, "1,2"), {}, "image/png", 400),
        (rendered_url(hds, dataset, 11), {}, "image/png", 404),
        (rendered_url(hds, dataset), {"quality": "0"}, "image/jpeg", 400),
        (rendered_url(hds, dataset), {"quality": "101"}, "image/jpeg", 400),
        (rendered_url(hds, dataset), {"viewport": "0,10"}, "image/png", 400),
        (rendered_url(hds, dataset), {"viewport": "99999,99999"}, "image/png", 400),
        (rendered_url(hds, dataset), {"window": "40,400,LINEAR"}, "image/png", 400),
        (rendered_url(hds, dataset), {}, "image/gif", 406),
        (rendered_url(hds, plan), {}, "image/png", 406),
    ]
    for url, parameters, accept, status in cases:
        response = hds.http.get(url, params=parameters, headers={"Accept": accept})
        assert response.status_code == status, (url, parameters, accept, response.status_code, response.text)
    missing = rendered_url(hds, dataset).replace(dataset.SOPInstanceUID, "1.2.3.4")
    assert hds.http.get(missing, headers={"Accept": "image/png"}).status_code == 404
    import requests

    anonymous = requests.get(rendered_url(hds, dataset), headers={"Accept": "image/png"})
    assert anonymous.status_code == 401
