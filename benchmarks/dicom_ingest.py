"""DICOM ingest reads headers only: images/s of ingest against validate and preprocess.

Writes ``--images`` CT slices (``--side`` 512: 512x512 int16, explicit VR little endian,
rescale intercept -1024, one PatientID per ``--per-patient`` 50 slices: what a CT series export
looks like) once into ``--workdir``, then times, each in its own process from a warm page
cache: ``ingest`` (hash + header, no pixel decoding), ``validate`` (decodes every slice) and
``preprocess`` (decodes, windows and resizes into shards). Prints images/s and peak RSS per
step.

    .venv/bin/python benchmarks/dicom_ingest.py --images 5000 [--side 512] [--per-patient 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEP = r"""
import json, resource, sys, time
from pathlib import Path
from medml.config import load_recipe
recipe = load_recipe("kidney-ct", overrides=["data.min_images_per_class=1"])
work, step = Path(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
if step == "ingest":
    from medml.data.ingest import ingest
    ingest(work / "data", work / "manifest.parquet", recipe)
elif step == "validate":
    from medml.data.validate import validate
    validate(work / "manifest.parquet", work / "validation", recipe)
elif step == "split":
    from medml.split import split
    split(work / "validation" / "clean_manifest.parquet", work / "splits.parquet", recipe)
else:
    from medml.preprocess import preprocess
    preprocess(work / "splits.parquet", work / "shards", recipe)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_slices(root: Path, count: int, side: int = 512, per_patient: int = 50) -> None:
    """``count`` CT slices under ``root/<Class>/``, ``per_patient`` per patient."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    body = ((yy - side / 2) ** 2 / 0.18 + (xx - side / 2) ** 2 / 0.25) < (side / 2.3) ** 2 / 0.2
    classes = ["Normal", "Cyst", "Stone", "Tumor"]
    for k in range(count):
        label = classes[k % 4]
        hu = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (side, side))
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality, ds.PatientID, ds.PatientName = "CT", f"P{k // per_patient:05d}", "Anon^Bench"
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        target = root / label / f"slice-{k:05d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--per-patient", type=int, default=50, help="slices per PatientID")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medml-bench-dicom"))
    args = parser.parse_args()
    data = args.workdir / "data"
    shape = args.workdir / "slices.json"  # what the cached slices were written with
    wanted = {"images": args.images, "side": args.side, "per_patient": args.per_patient}
    if not shape.is_file() or json.loads(shape.read_text()) != wanted:
        print(f"writing {args.images} DICOM slices to {data} ...", flush=True)
        subprocess.run(["rm", "-rf", str(args.workdir)], check=True)
        write_slices(data, args.images, args.side, args.per_patient)
        shape.write_text(json.dumps(wanted))
    subprocess.run(["cat", *map(str, data.rglob("*.dcm"))], stdout=subprocess.DEVNULL, check=True)
    size_mb = sum(p.stat().st_size for p in data.rglob("*.dcm")) / 1e6
    print(
        f"images: {args.images}  {args.side}x{args.side} int16 CT  {size_mb:.0f} MB   cores: "
        f"{len(__import__('os').sched_getaffinity(0))}"
    )
    print(f"{'step':12s} {'seconds':>8s} {'images/s':>9s} {'peak RSS MB':>12s}")
    for step in ("ingest", "validate", "split", "preprocess"):
        done = subprocess.run([sys.executable, "-c", STEP, str(args.workdir), step],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{step} failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        rate = args.images / figures["seconds"]
        print(f"{step:12s} {figures['seconds']:8.2f} {rate:9.0f} {figures['rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
