"""The hostile corpus: files that are odd, damaged or dangerous, and real scanner DICOMs.

Every kind ends in one of three outcomes: quarantined with a reason (the row-level kinds),
a clear error naming the file and line (the dataset-level kinds), or correctly accepted — no
traceback, no hang (every test has a timeout), and no byte of the source changed. The DICOM
files are the real exports pydicom ships with its package (CT, MR, DX/US/SC from several
vendors, every common transfer syntax), plus variations made from them.
"""

from __future__ import annotations

import os
import socket
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medml.config import load_recipe
from medml.data.images import MAX_PIXELS, read_image
from medml.data.ingest import IngestError, ingest
from medml.data.validate import validate
from medml.preprocess import LoadImage
from tests.conftest import tree_snapshot

pytestmark = pytest.mark.timeout(180)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RECIPE = load_recipe("kidney-ct", overrides=[
    "data.min_images_per_class=1", "data.max_quarantine_fraction=1.0", "data.min_image_side=8",
])  # fmt: skip
CANARY = "CANARY^SECRET^NAME"
AS_ROOT = os.geteuid() == 0  # root reads a mode-000 file: then "unreadable" is accepted


def _png_bytes(width: int, height: int, pixel_data: bytes = b"") -> bytes:
    """A greyscale PNG of this declared size (its IDAT chunk only when ``pixel_data`` is given)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", pixel_data) if pixel_data else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def _gray(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def _png(path: Path, seed: int) -> None:
    cv2.imwrite(str(path), _gray(seed))


def _dicom(name: str, **changes: object) -> Callable[[Path], None]:
    """Copy a DICOM that pydicom ships; with ``changes``, set those header fields first."""

    def make(path: Path) -> None:
        if not changes:
            path.write_bytes((PYDICOM_FILES / name).read_bytes())
            return
        ds = pydicom.dcmread(PYDICOM_FILES / name)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)

    return make


def _float_tiff(value: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        image = _gray(7).astype(np.float32)
        image[3, 4] = value
        cv2.imwrite(str(path), image)

    return make


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _unreadable(path: Path) -> None:
    _png(path, 30)
    path.chmod(0)


def _multipage_tiff(path: Path) -> None:
    pages = [Image.fromarray(_gray(40 + k)) for k in range(3)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _animated_gif(path: Path) -> None:
    pages = [Image.fromarray(_gray(50 + k)) for k in range(2)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _declared_bomb(path: Path) -> None:
    """A PNG whose real pixel data is 10001 x 10001 zeros (> MAX_PIXELS), 100 KB on disk."""
    side = 10_001
    row = b"\x00" * (side + 1)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(_png_bytes(side, side, data))


# name under Normal/ -> (how to make it, expected outcome). Outcomes: "accepted" (one image),
# "frames:N" (N images), "ignored" (counted by extension), "ignored:<kind>" (counted by kind),
# or a fragment of the quarantine reason.
KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    # raster files
    "ok.png": (lambda p: _png(p, 1), "accepted"),
    "zero.jpg": (lambda p: p.write_bytes(b""), "0 bytes"),
    "truncated.jpg": (
        lambda p: p.write_bytes(cv2.imencode(".jpg", _gray(2))[1].tobytes()[:200]),
        "does not decode as an image",
    ),
    "text.jpg": (lambda p: p.write_text("not an image\n"), "does not decode as an image"),
    "png-named.jpg": (
        lambda p: p.write_bytes(cv2.imencode(".png", _gray(3))[1].tobytes()),
        "accepted",
    ),
    "sixteen-bit.png": (
        lambda p: cv2.imwrite(str(p), _gray(4).astype(np.uint16) * 257),
        "accepted",
    ),
    "rgba.png": (lambda p: cv2.imwrite(str(p), np.dstack([_gray(5)] * 4)), "accepted"),
    "cmyk.jpg": (
        lambda p: Image.new("CMYK", (32, 32), (10, 200, 30, 5)).save(p, "JPEG"),
        "accepted",
    ),
    "bitmap.bmp": (lambda p: cv2.imwrite(str(p), _gray(6)), "accepted"),
    "one-pixel.png": (
        lambda p: cv2.imwrite(str(p), np.zeros((1, 1), np.uint8)),
        "smaller than data.min_image_side=8",
    ),
    "huge-header.png": (
        lambda p: p.write_bytes(_png_bytes(100_000, 100_000)),
        "decompression-bomb",
    ),
    "real-bomb.png": (_declared_bomb, f"more than {MAX_PIXELS:,}"),
    "float.tif": (_float_tiff(0.5), "accepted"),
    "nan.tif": (_float_tiff(float("nan")), "NaN or infinite"),
    "inf.tif": (_float_tiff(float("inf")), "NaN or infinite"),
    "three-pages.tif": (_multipage_tiff, "frames:3"),
    "ünïcødé 肾.png": (lambda p: _png(p, 8), "accepted"),
    # what is not a regular file, or must not be followed
    "pipe.png": (_fifo, "a named pipe"),
    "socket.png": (_socket, "a socket"),
    "device.png": (lambda p: os.symlink("/dev/zero", p), "outside the dataset root"),
    "dangling.png": (lambda p: os.symlink(p.parent / "gone.png", p), "broken symlink"),
    "loop-a.png": (lambda p: os.symlink(p.parent / "loop-b.png", p), "symlink loop"),
    "loop-b.png": (lambda p: os.symlink(p.parent / "loop-a.png", p), "symlink loop"),
    "inside-link.png": (
        lambda p: os.symlink(p.parent / "ok.png", p),
        "symlink to a regular file; symlinks are not followed",
    ),
    "pipe-link.png": (lambda p: os.symlink(p.parent / "pipe.png", p), "a named pipe"),
    "unreadable.png": (_unreadable, "accepted" if AS_ROOT else "not readable"),
    # not an image by name, and not a regular file: never opened, counted by kind
    "notes.txt": (_fifo, "ignored:named pipe"),
    "zero.txt": (lambda p: os.symlink("/dev/zero", p), "ignored:symlink"),
    "README.lnk": (lambda p: os.symlink("/nowhere/README", p), "ignored:symlink"),
    "socket": (_socket, "ignored:socket"),
    ".#ok.png": (lambda p: os.symlink("user@host.1234:5678", p), "ignored:hidden"),  # Emacs lock
    ".DS_Store": (lambda p: p.write_bytes(b"\0\0\0\1Bud1"), "ignored:hidden"),
    ".thumbs": (lambda p: (p.mkdir(), _png(p / "thumb.png", 31)), "ignored:hidden folder"),
    # extensions the recipe does not list: counted, never read
    "animated.gif": (_animated_gif, "ignored"),
    "photo.webp": (lambda p: Image.fromarray(_gray(9)).save(p, "WEBP"), "ignored"),
    "README": (lambda p: p.write_text("notes"), "ignored"),
    # DICOM: real scanner files of each modality and transfer syntax
    "ct.dcm": (_dicom("CT_small.dcm"), "accepted"),
    "mr.dcm": (_dicom("MR_small.dcm"), "accepted"),
    "mr-implicit.dcm": (_dicom("MR_small_implicit.dcm"), "accepted"),
    "mr-big-endian.dcm": (_dicom("MR_small_bigendian.dcm"), "accepted"),
    "deflated.dcm": (_dicom("image_dfl.dcm"), "accepted"),
    "jpeg-baseline-ybr.dcm": (_dicom("SC_rgb_jpeg_dcmtk.dcm"), "accepted"),
    "jpeg-extended-12bit.dcm": (_dicom("JPGExtended.dcm"), "accepted"),
    "jpeg-lossless.dcm": (_dicom("SC_rgb_jpeg_gdcm.dcm"), "accepted"),
    "jpeg-ls-lossless.dcm": (_dicom("MR_small_jpeg_ls_lossless.dcm"), "accepted"),
    "jpeg-ls-near-lossless.dcm": (_dicom("JPEGLSNearLossless_16.dcm"), "accepted"),
    "jpeg2000-lossless.dcm": (_dicom("MR_small_jp2klossless.dcm"), "accepted"),
    "jpeg2000.dcm": (_dicom("693_J2KI.dcm"), "accepted"),
    "rle.dcm": (_dicom("MR_small_RLE.dcm"), "accepted"),
    "rgb-16bit-rle.dcm": (_dicom("SC_rgb_rle_16bit.dcm"), "accepted"),
    "palette.dcm": (_dicom("examples_palette.dcm"), "accepted"),
    "ybr-422.dcm": (_dicom("SC_ybr_full_422_uncompressed.dcm"), "accepted"),
    "monochrome1.dcm": (
        _dicom("MR_small.dcm", PhotometricInterpretation="MONOCHROME1"),
        "accepted",
    ),
    "canary.dcm": (
        _dicom("CT_small.dcm", PatientName=CANARY, PatientID="CANARY-ID-12345"),
        "accepted",
    ),
    "ultrasound-30-frames.dcm": (_dicom("examples_ybr_color.dcm"), "frames:30"),
    "dose-15-frames.dcm": (_dicom("rtdose.dcm"), "frames:15"),
    "png-named.dcm": (
        lambda p: p.write_bytes(cv2.imencode(".png", _gray(10))[1].tobytes()),
        "accepted",
    ),
    "jpeg-damaged.dcm": (_dicom("JPEG-lossy.dcm"), "JPEG Extended (Process 2 and 4)"),
    "truncated.dcm": (_dicom("MR_truncated.dcm"), "cannot be decoded"),
    "no-meta.dcm": (_dicom("no_meta.dcm"), "not a DICOM Part 10 file"),
    "no-transfer-syntax.dcm": (_dicom("meta_missing_tsyntax.dcm"), "no transfer syntax"),
    "rt-plan.dcm": (_dicom("rtplan.dcm"), "without an image"),
    "structured-report.dcm": (_dicom("test-SR.dcm"), "without an image"),
    "bomb-header.dcm": (_dicom("CT_small.dcm", Rows=20_000, Columns=20_000), "more than"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("corpus")
    root, outside = base / "ds", base / "outside"
    outside.mkdir()
    _png(outside / "secret.png", 99)
    for label in ("Normal", "Cyst", "Stone", "Tumor"):
        (root / label).mkdir(parents=True)
        _png(root / label / "ok.png", 500 + len(label) * 7 + ord(label[0]))
    normal = root / "Normal"
    for name, (make, _) in KINDS.items():
        make(normal / name)
    os.symlink(outside / "secret.png", normal / "escape.png")
    os.symlink(outside, normal / "linked-folder")
    os.symlink(outside, root / "Linked-Class")  # a class folder that is a link: never followed
    _png(root / "stray.png", 14)  # an image outside every class folder
    bad_name = os.fsencode(normal) + b"/latin1-\xe9.png"
    with open(bad_name, "wb") as handle:
        handle.write(cv2.imencode(".png", _gray(11))[1].tobytes())
    _png(root / "Cyst" / "twice.png", 12)
    _png(root / "Tumor" / "twice.png", 12)  # the same bytes under another label
    (root / "Kidney-Stone").mkdir()
    _png(root / "Kidney-Stone" / "x.png", 13)
    (root / "Stone" / "empty-subfolder").mkdir()
    return root, outside


EXTRA = {  # kinds made outside the table above
    "Normal/escape.png": "symlink points outside the dataset root",
    "Normal/linked-folder": "symlink to a folder",
    "Linked-Class": "symlink to a folder; symlinks are not followed",
    "stray.png": "ignored:not in a class folder",
    "Normal/latin1-\\xe9.png": "not valid UTF-8",
    "Cyst/twice.png": "different labels",
    "Tumor/twice.png": "different labels",
    "Kidney-Stone/x.png": "is not one of",
}


def test_every_kind_has_its_exact_outcome_and_no_byte_changes(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    root, outside = corpus
    before = tree_snapshot(root), tree_snapshot(outside)
    ingested = ingest(root, tmp_path / "m.parquet", RECIPE)
    result = validate(ingested.manifest, tmp_path / "validation", RECIPE)
    manifest = pd.read_parquet(ingested.manifest)
    kinds = dict(zip(manifest["path"], manifest["issue"].where(manifest["ignored"]), strict=True))
    quarantine = pd.read_csv(result.quarantine)
    reasons = quarantine.groupby("path")["reason"].first().to_dict()
    clean = pd.read_parquet(result.clean_manifest)
    images = clean.groupby("path").size().to_dict()
    report = pd.read_json(result.report, typ="series")

    expected = {f"Normal/{name}": outcome for name, (_, outcome) in KINDS.items()} | EXTRA
    assert len(expected) >= 60
    for path, outcome in expected.items():
        if outcome == "accepted":
            assert images.get(path) == 1, (path, reasons.get(path))
        elif outcome.startswith("frames:"):
            assert images.get(path) == int(outcome.split(":")[1]), (path, reasons.get(path))
        elif outcome.startswith("ignored"):
            assert path not in images and path not in reasons, path
            assert kinds[path] == outcome.partition(":")[2], (path, kinds.get(path))
        else:
            assert outcome in reasons.get(path, ""), (path, reasons.get(path))
    assert set(images) == {
        p for p, o in expected.items() if o == "accepted" or o.startswith("frames:")
    } | {"Cyst/ok.png", "Stone/ok.png", "Tumor/ok.png"}
    assert report["ignored"] == {
        "(none)": 1, ".gif": 1, ".webp": 1, "hidden": 2, "hidden folder": 1, "named pipe": 1,
        "not in a class folder": 1, "socket": 1, "symlink": 2,
    }  # fmt: skip
    assert report["ignored_summary"].startswith("ignored: 1 (none), 1 .gif, 1 .webp, 2 hidden,")
    assert not any("thumb.png" in path or "secret" in path for path in manifest["path"])
    assert (tree_snapshot(root), tree_snapshot(outside)) == before


def test_undecodable_transfer_syntax_names_the_syntax_and_what_to_install(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = corpus
    with pytest.raises(ValueError) as caught:
        read_image(root / "Normal" / "jpeg-damaged.dcm", name="jpeg-damaged.dcm")
    message = str(caught.value)
    assert "jpeg-damaged.dcm" in message and "1.2.840.10008.1.2.4.51" in message
    assert "pylibjpeg" in message and "python-gdcm" in message


def test_every_accepted_file_preprocesses_and_no_patient_identifier_is_stored(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = corpus
    manifest_path = ingest(root, tmp_path / "m.parquet", RECIPE).manifest
    clean = pd.read_parquet(validate(manifest_path, tmp_path / "v", RECIPE).clean_manifest)
    load = LoadImage(24, 3)
    for row in clean.itertuples():
        assert load(root / row.path, frame=row.frame).shape == (24, 24, 3)
    canary = clean[clean["path"] == "Normal/canary.dcm"].iloc[0]
    assert canary["group_source"] == "PatientID" and canary["group"].startswith("PatientID:")
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for secret in (CANARY, "CANARY-ID-12345", "CompressedSamples^CT1", "1CT1"):
        assert secret.encode() not in written, secret


def test_dicom_by_modality_looks_right(corpus: tuple[Path, Path]) -> None:
    normal = corpus[0] / "Normal"
    mono2 = read_image(normal / "mr.dcm")
    mono1 = read_image(normal / "monochrome1.dcm")
    np.testing.assert_array_equal(mono1, 255 - mono2)  # MONOCHROME1 inverted
    assert mono2.std() > 20 and len(np.unique(mono2)) > 100  # 16-bit MR not crushed
    ct = read_image(normal / "ct.dcm")
    lung = read_image(normal / "ct.dcm", ct_windows=["lung"])
    stacked = read_image(normal / "ct.dcm", ct_windows=["abdomen", "lung", "bone"])
    assert stacked.shape == (*ct.shape, 3)
    np.testing.assert_array_equal(stacked[:, :, 2], ct)  # R = first window (BGR order)
    np.testing.assert_array_equal(stacked[:, :, 1], lung)
    palette = read_image(normal / "palette.dcm")
    ybr = read_image(normal / "jpeg-baseline-ybr.dcm")
    assert palette.ndim == 3 and ybr.ndim == 3
    assert len(np.unique(palette.reshape(-1, 3), axis=0)) > 10  # colours, not 2 grey levels
    frames = [read_image(normal / "dose-15-frames.dcm", frame=k) for k in (0, 7, 14)]
    assert not np.array_equal(frames[0], frames[2])
    with pytest.raises(ValueError, match="has 15 frame"):
        read_image(normal / "dose-15-frames.dcm", frame=15)


def test_multi_frame_policy_is_recorded(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = corpus
    for policy, frames in (("first", [0]), ("middle", [7]), ("all", list(range(15)))):
        recipe = load_recipe("kidney-ct", overrides=[f"data.multi_frame={policy}"])
        manifest = pd.read_parquet(ingest(root, tmp_path / f"{policy}.parquet", recipe).manifest)
        rows = manifest[manifest["path"] == "Normal/dose-15-frames.dcm"]
        assert rows["frame"].tolist() == frames and set(rows["frames"]) == {15}
        assert rows["group"].nunique() == 1  # every frame in the file's group


def test_predict_refuses_a_bomb_without_allocating_it(corpus: tuple[Path, Path]) -> None:
    data = (corpus[0] / "Normal" / "real-bomb.png").read_bytes()
    assert len(data) < 1_000_000
    with pytest.raises(ValueError, match="more than 100,000,000 pixels"):
        LoadImage(32, 1)(data, name="upload.png")


def test_a_pipe_given_to_predict_is_refused_not_read(corpus: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="not a regular file .a named pipe."):
        LoadImage(32, 1)(corpus[0] / "Normal" / "pipe.png")


# Dataset-level problems: the step stops with an error naming the file and the line.


def _capsule(root: Path, csv_text: bytes) -> Path:
    (root / "train").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "train" / f"f{i}.jpg"), _gray(20 + i))
    (root / "Training_set.csv").write_bytes(csv_text)
    return root


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (
            b'filename,label\nf0.jpg,Polyp\n"f1.jpg,Ulcer\nf2.jpg,Polyp\n',
            r"line 3: cannot be parsed",
        ),
        (b"filename,label\nf0.jpg,Polyp\nf1\xe9.jpg,Ulcer\n", r"line 3: not UTF-8"),
        (b"file,label\nf0.jpg,Polyp\n", r"lacks column\(s\) \['filename'\]"),
    ],
    ids=["unclosed-quote", "not-utf8", "missing-column"],
)
def test_a_broken_csv_names_its_line(tmp_path: Path, csv_text: bytes, message: str) -> None:
    root = _capsule(tmp_path / "ds", csv_text)
    with pytest.raises(IngestError, match=message) as caught:
        ingest(root, tmp_path / "m.parquet", load_recipe("capsule-endoscopy"))
    assert "Training_set.csv" in str(caught.value)


def test_csv_rows_that_repeat_or_point_at_a_pipe_are_quarantined(tmp_path: Path) -> None:
    root = _capsule(
        tmp_path / "ds",
        b"filename,label\nf0.jpg,Polyp\nf0.jpg,Polyp\npipe.jpg,Ulcer\nf1\x00.jpg,Ulcer\n",
    )
    os.mkfifo(root / "train" / "pipe.jpg")
    manifest = pd.read_parquet(
        ingest(root, tmp_path / "m.parquet", load_recipe("capsule-endoscopy")).manifest
    )
    issues = manifest.set_index(manifest.index)["issue"].tolist()
    assert issues[0] == ""
    assert "line 3: train/f0.jpg is listed again (first on line 2)" in issues[1]
    assert "a named pipe" in issues[2]
    assert "line 5: listed file train/f1\x00.jpg does not exist" in issues[3]  # a NUL in a name


def _grouped(root: Path, groups: bytes) -> Path:
    for k, label in enumerate(("Normal", "Cyst", "Stone", "Tumor")):
        (root / label).mkdir(parents=True)
        for i in range(2):
            _png(root / label / f"p{i}.png", 100 + 2 * k + i)
    (root / "groups.csv").write_bytes(groups)
    return root


def test_files_missing_from_groups_csv_stop_ingest_or_are_counted(tmp_path: Path) -> None:
    root = _grouped(tmp_path / "ds", b"path,group\nNormal/p0.png,A\nNormal/p1.png,A\n")
    with pytest.raises(IngestError, match=r"6 of 8 files are not in .*groups.csv \(e.g. Cyst/p0"):
        ingest(root, tmp_path / "m.parquet", RECIPE)
    recipe = load_recipe("kidney-ct", overrides=["data.groups_missing=own_group",
                                                 "data.min_images_per_class=1"])  # fmt: skip
    manifest = ingest(root, tmp_path / "m.parquet", recipe).manifest
    report = pd.read_json(validate(manifest, tmp_path / "v", recipe).report, typ="series")
    assert report["group_sources"] == {"file": 6, "groups.csv": 2}


def test_an_unparseable_groups_csv_names_its_line(tmp_path: Path) -> None:
    root = _grouped(tmp_path / "ds", b'path,group\nNormal/p0.png,"A\nNormal/p1.png,A\n')
    with pytest.raises(IngestError, match=r"groups.csv line 2: cannot be parsed"):
        ingest(root, tmp_path / "m.parquet", RECIPE)
