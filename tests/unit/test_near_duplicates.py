"""Near-duplicate signatures and capped single-linkage clusters (medml.near_duplicates)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from medml import near_duplicates
from medml.config import Recipe
from medml.near_duplicates import (
    cluster,
    signatures,
    similar_pairs,
    similarity_matrix,
    thumbnail,
)
from medml.split import near_duplicate_groups


def _scan(rng: np.random.Generator, slices: int, size: int = 96) -> list[np.ndarray]:
    """A smooth series: one random anatomy, shifted a pixel and rescaled slightly per slice."""
    anatomy = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 4)
    out = []
    for k in range(slices):
        shift = np.float32([[1, 0, k * 0.5], [0, 1, 0]])
        moved = cv2.warpAffine(anatomy, shift, (size, size), borderMode=cv2.BORDER_REFLECT)
        noise = rng.normal(0, 0.002, moved.shape).astype(np.float32)
        out.append(moved * (1 + 0.01 * k) + noise)
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(similarity_matrix(signatures([thumbnail(a), thumbnail(b)]))[0, 1])


def test_signature_ignores_size_brightness_and_compression_but_not_content() -> None:
    rng = np.random.default_rng(1)
    image = (cv2.GaussianBlur(rng.random((256, 256)), (0, 0), 6) * 255).astype(np.uint8)
    smaller = cv2.resize(image, (100, 100), interpolation=cv2.INTER_AREA)
    brighter = np.clip(image.astype(np.float32) * 1.3 + 20, 0, 255).astype(np.uint8)
    _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    recompressed = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    colour = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for variant in (smaller, brighter, recompressed, colour):
        assert _correlation(image, variant) > 0.98
    other = (cv2.GaussianBlur(rng.random((256, 256)), (0, 0), 6) * 255).astype(np.uint8)
    assert _correlation(image, other) < 0.7
    flat = np.full((32, 32), 7, np.uint8)
    assert _correlation(flat, flat) == 0.0  # a blank image is nobody's near-duplicate


def test_blocked_search_finds_exactly_the_brute_force_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(2)
    sigs = signatures([thumbnail(image) for _ in range(6) for image in _scan(rng, 7)])
    dense = similarity_matrix(sigs)
    np.fill_diagonal(dense, -np.inf)
    dense = np.maximum(dense, dense.T)  # a pair is found from either side, at its best
    expected = {(a, b) for a, b in zip(*np.nonzero(dense >= 0.97), strict=True) if a < b}
    monkeypatch.setattr(near_duplicates, "_BLOCK_FLOATS", 50)  # one row per block
    i, j, s = similar_pairs(sigs, similarity=0.97)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    np.testing.assert_allclose(s, dense[i, j], rtol=1e-6)


def test_scans_become_one_cluster_each_and_the_cap_holds() -> None:
    rng = np.random.default_rng(3)
    scans = [_scan(rng, slices) for slices in (12, 9, 15, 6)]
    sigs = signatures([thumbnail(image) for scan in scans for image in scan])
    patient = np.repeat(np.arange(4), [len(scan) for scan in scans])

    found = cluster(sigs, similarity=0.98, max_group=40)
    assert len(set(found.labels)) == 4
    assert pd.crosstab(found.labels, patient).gt(0).sum(axis=1).eq(1).all()  # no mixing
    assert found.summary()["largest"] == 15 and found.refused_by_cap == 0

    capped = cluster(sigs, similarity=0.98, max_group=5)
    assert capped.sizes.max() <= 5 and capped.refused_by_cap > 0


def test_start_groups_stay_whole() -> None:
    rng = np.random.default_rng(4)
    a, b = _scan(rng, 3), _scan(rng, 3)
    sigs = signatures([thumbnail(image) for image in [a[0], b[0], a[1], b[1], a[2], b[2]]])
    start = np.array(["file-1", "file-1", "x", "y", "z", "w"])  # two frames of one file
    found = cluster(sigs, similarity=0.98, max_group=10, start=start)
    assert len(set(found.labels)) == 1  # the file's frames join both scans into one group
    alone = cluster(sigs, similarity=0.98, max_group=10)
    assert len(set(alone.labels)) == 2


def test_only_rows_without_a_patient_group_get_pseudo_groups(tiny_recipe: Recipe) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for p, label in enumerate(["Normal", "Cyst", "Stone", "Tumor"] * 2):
        known = p < 4  # the first four patients come with groups.csv, the others do not
        for k, image in enumerate(_scan(rng, 5)):
            path = f"{label}/p{p}_{k}.png"
            rows.append({"path": path, "label": label, "thumbnail": thumbnail(image),
                         "group": f"P{p}" if known else path,
                         "group_source": "groups.csv" if known else "file"})  # fmt: skip
    table = pd.DataFrame(rows)
    recipe = tiny_recipe.model_copy(
        update={"split": tiny_recipe.split.model_copy(update={"near_duplicate_max_group": 10})}
    )
    grouped, summary = near_duplicate_groups(table, recipe)
    known = table["group_source"].eq("groups.csv")
    pd.testing.assert_frame_equal(grouped[known], table[known])
    pseudo = grouped[~known]
    assert pseudo["group_source"].eq("near-duplicates").all()
    assert pseudo.groupby(pseudo["path"].str.split("_").str[0])["group"].nunique().eq(1).all()
    assert summary is not None and summary["clusters"] == 4 and summary["largest"] == 5

    report_only = tiny_recipe.model_copy(
        update={"split": tiny_recipe.split.model_copy(update={"near_duplicates": "report"})}
    )
    unchanged, none = near_duplicate_groups(table, report_only)
    assert none is None and unchanged is table


@pytest.mark.parametrize("width", [5, 64, 4096, 50_000])
def test_kth_largest_is_partitions_answer_on_any_rows(width: int) -> None:
    from medml.near_duplicates import kth_largest

    rng = np.random.default_rng(width)
    rows = rng.normal(size=(40, width)).astype(np.float32)
    rows[1] = np.sort(rows[1])  # the largest values bunched where a strided sample misses them
    rows[2] = 0.5  # all tied
    rows[3, : width // 2] = -np.inf
    rows[4] = np.round(rows[4], 1)  # many ties around the k-th
    for k in sorted({1, 2, min(16, width), width}):
        expected = np.partition(rows, -k, axis=1)[:, -k]
        np.testing.assert_array_equal(kth_largest(rows, k), expected)


def test_copies_shifted_by_a_pixel_of_a_small_image_stay_near_duplicates() -> None:
    """A real image no one here made (a scikit-learn digit at 32 px): a two-pixel shift (one
    thumbnail pixel) drops the aligned thumbnail correlation below the threshold; the
    shift-tolerant one keeps it. (Half a thumbnail pixel is the worst case: see docs/data.md.)"""
    from sklearn.datasets import load_digits

    digit = cv2.resize(load_digits().images[3].astype(np.float32) * 16, (32, 32),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    shifted = np.roll(digit, (2, 2), axis=(0, 1))
    sigs = signatures([thumbnail(digit), thumbnail(shifted)])
    centre = sigs[len(sigs) // 2]
    aligned = float(centre[0] @ centre[1])
    tolerant = float(similarity_matrix(sigs)[0, 1])
    assert aligned < 0.95 <= tolerant, (aligned, tolerant)
    other = cv2.resize(load_digits().images[7].astype(np.float32) * 16, (32, 32),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    assert float(similarity_matrix(signatures([thumbnail(digit), thumbnail(other)]))[0, 1]) < 0.9


def test_no_images_no_signatures_no_pairs() -> None:
    """Cross-validation only: the holdout is empty, and so are its signatures."""
    empty = signatures([])
    assert empty.shape[1] == 0
    i, _, _ = similar_pairs(empty, signatures([thumbnail(np.eye(32))]), similarity=0.95)
    assert len(i) == 0
