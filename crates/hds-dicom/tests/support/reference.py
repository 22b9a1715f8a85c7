"""Reference values for one DICOM file, computed with pydicom.

Usage: reference.py FILE OUTDIR
Prints a JSON object with the UIDs, the transfer syntax and the frame count, and writes each
frame's bytes (as pydicom yields them: native slices of PixelData, or
pydicom.encaps.generate_frames for encapsulated data) to OUTDIR/frame_N.bin.
"""

import json
import os
import sys

import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length


def main() -> None:
    path, out_dir = sys.argv[1], sys.argv[2]
    ds = pydicom.dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = []
    if "PixelData" in ds:
        pixel_data = ds.PixelData
        if ts.is_encapsulated:
            frames = list(generate_frames(pixel_data, number_of_frames=number_of_frames))
        else:
            # pydicom's own idea of the native size (it knows YBR_FULL_422 subsampling).
            length = get_expected_length(ds, "bytes") // number_of_frames
            frames = [pixel_data[i * length:(i + 1) * length] for i in range(number_of_frames)]
    for index, frame in enumerate(frames):
        with open(os.path.join(out_dir, f"frame_{index}.bin"), "wb") as f:
            f.write(frame)
    print(json.dumps({
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "sop": str(ds.SOPInstanceUID),
        "sop_class": str(ds.SOPClassUID),
        "transfer_syntax": str(ts),
        "frames": len(frames),
        "patient_name": str(ds.get("PatientName", "")),
        "modality": str(ds.get("Modality", "")),
    }))


if __name__ == "__main__":
    main()
