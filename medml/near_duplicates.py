"""Near-duplicate images: one signature, one similarity, used for grouping and for the audit.

A dataset without patient ids can still hold many images of one patient (the slices of a CT
scan, the frames of a capsule video). Split by image, a patient's slices land on both sides
of the holdout and the score measures memory, not diagnosis. Here such images are found from
their pixels and linked into pseudo-patient groups that the group-aware split keeps together.

* **Signature**: the decoded image (as the recipe decodes it) in grey, shrunk to 16×16 with
  area averaging, stored by ``validate`` as 256 bytes per row (``thumbnail``).
* **Similarity**: the best Pearson correlation of two signatures over small shifts (a window
  :data:`SHIFT` pixels smaller on every side, slid over the other thumbnail): 1.0 for the same
  picture at another brightness, contrast, size or compression, and high for copies shifted by
  up to 1/8 of the image or slightly rotated or scaled (a plain correlation of aligned
  thumbnails drops to ~0.96 for a one-pixel shift of a 32-pixel image); neighbouring CT slices
  of one scan score about 0.99. The same similarity finds the groups and audits the split.
* **Clusters**: single linkage over each image's nearest neighbours at or above
  ``split.near_duplicate_similarity``, most similar pairs first, refusing any merge that would
  make a cluster larger than ``split.near_duplicate_max_group`` — so one chain of look-alikes
  cannot swallow a class. Found in blocks: memory is O(block × n), never n × n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

THUMBNAIL_SIDE = 16
SHIFT = 1
"""Thumbnail pixels a copy may be shifted by, each way (1/8 of the image): slices of one scan
are shifted, slightly scaled and rotated versions of each other, not pixel-aligned copies."""
NEIGHBOURS = 16  # candidate pairs kept per image; a chain needs only its nearest few
_BLOCK_FLOATS = 1 << 25  # one similarity block: 32 M floats (128 MB)


def thumbnail(image: np.ndarray) -> bytes:
    """The near-duplicate signature of a decoded image: 16×16 grey, area-averaged, uint8."""
    if image.ndim == 3:
        image = image[:, :, :3].mean(axis=2) if image.shape[2] >= 3 else image[:, :, 0]
    small = cv2.resize(
        image.astype(np.float32), (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA
    )
    scaled = cv2.normalize(small, None, 0, 255, cv2.NORM_MINMAX)
    return np.round(scaled).astype(np.uint8).tobytes()


def signatures(thumbnails: Sequence[bytes], shift: int = SHIFT) -> np.ndarray:
    """The signatures of thumbnails: for each of the ``(2 * shift + 1) ** 2`` offsets of a
    window ``shift`` pixels smaller on every side, the window's mean-removed, unit-length
    float32 rows — shape ``(offsets, images, window pixels)``, the centred window in the middle.
    A flat (or missing) thumbnail is all zeros and so similar to nothing."""
    side = THUMBNAIL_SIDE
    grids = np.zeros((len(thumbnails), side, side), np.float32)
    for i, raw in enumerate(thumbnails):
        if raw is not None and len(raw) == side * side:
            grids[i] = np.frombuffer(raw, np.uint8).reshape(side, side)
    window = side - 2 * shift
    offsets = []
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            rows = (
                grids[:, dy : dy + window, dx : dx + window].reshape(len(grids), window**2).copy()
            )
            rows -= rows.mean(axis=1, keepdims=True)
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            np.divide(rows, norms, out=rows, where=norms > 0)
            rows[norms[:, 0] == 0] = 0.0
            offsets.append(rows)
    return np.stack(offsets)


def similarity_matrix(left: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """The best correlation over every offset: ``left``'s centred windows against each of
    ``other``'s (default: ``left``'s) windows, so copies shifted by up to ``shift`` thumbnail
    pixels score high. Dense: for small sets; :func:`similar_pairs` searches in blocks."""
    other = left if other is None else other
    centre = left[len(left) // 2]
    best = centre @ other[0].T
    for window in other[1:]:
        np.maximum(best, centre @ window.T, out=best)
    return best


def similar_pairs(
    left: np.ndarray, right: np.ndarray | None = None, *, similarity: float, neighbours: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, similarity)`` with similarity >= ``similarity``, found block by block.

    Args:
        left: signatures (:func:`signatures`).
        right: other signatures; None pairs ``left`` with itself (each pair once, no self-pairs).
        similarity: the least (shift-tolerant) correlation that counts as a near-duplicate.
        neighbours: keep at most this many most-similar partners per ``left`` row (0: all).
    """
    other = left if right is None else right
    images = other.shape[1]
    block = max(1, _BLOCK_FLOATS // max(1, images))
    found_i, found_j, found_s = [], [], []
    for start in range(0, left.shape[1], block):
        sims = similarity_matrix(left[:, start : start + block], other)
        rows = np.arange(len(sims))
        if right is None:
            sims[rows, start + rows] = -np.inf
        hits = sims >= similarity
        if neighbours:  # rows with more hits than that: only their `neighbours` most similar
            crowded = np.flatnonzero(hits.sum(axis=1) > neighbours)
            if len(crowded):
                rows_sims = sims[crowded]
                kth = kth_largest(rows_sims, neighbours)
                hits[crowded] &= rows_sims >= kth[:, None]  # (a tie at the k-th keeps both)
        i, j = _nonzero(hits)
        found_i.append(start + i)
        found_j.append(j)
        found_s.append(sims[i, j])
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    if right is None:  # each unordered pair once (the more similar direction)
        order = np.argsort(-s, kind="stable")
        i, j, s = i[order], j[order], s[order]
        i, j = np.minimum(i, j), np.maximum(i, j)
        _, first = np.unique(i.astype(np.int64) * left.shape[1] + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.float32)


def kth_largest(rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k``-th largest value (``np.partition``'s), partitioning only the values
    that can be among the ``k`` largest.

    The ``k``-th largest of a strided sample of the row is a lower bound of the row's own (``k``
    of the row's values are at least that large), so the values below it are dropped before
    partitioning: a few hundred per row instead of every image's.
    """
    width = rows.shape[1]
    stride = width // max(_SAMPLE_PER_ROW, 4 * k)
    if len(rows) == 0 or stride < 2:
        return np.partition(rows, -k, axis=1)[:, -k]
    bound = np.partition(rows[:, ::stride], -k, axis=1)[:, -k]
    above = rows >= bound[:, None]
    counts = above.sum(axis=1)
    r, c = _nonzero(above)
    within = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    candidates = np.full((len(rows), int(counts.max())), -np.inf, rows.dtype)
    candidates[r, within] = rows[r, c]
    return np.partition(candidates, -k, axis=1)[:, -k]


_SAMPLE_PER_ROW = 1024


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-d mask, in its order (4× faster: flat indices, then divmod)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


@dataclass(frozen=True)
class Clusters:
    """Near-duplicate clusters of a set of images."""

    labels: np.ndarray
    """Cluster index per image (images linked to nothing are clusters of one)."""
    similarity: float
    max_group: int
    linked_pairs: int
    """Pairs at or above the threshold that were candidates for linking."""
    refused_by_cap: int
    """Merges refused because the cluster would have grown past ``max_group``."""

    @property
    def sizes(self) -> np.ndarray:
        """Size of each cluster."""
        return np.bincount(self.labels) if len(self.labels) else np.zeros(0, np.int64)

    def summary(self) -> dict[str, object]:
        """What the split report says about the clusters."""
        sizes = self.sizes
        multi = sizes[sizes > 1]
        return {
            "similarity": self.similarity,
            "signature": (
                f"best correlation of {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE} grey "
                f"thumbnails over shifts of up to {SHIFT} thumbnail pixels "
                f"({SHIFT}/{THUMBNAIL_SIDE} of the image) each way"
            ),
            "max_group": self.max_group,
            "clusters": int(len(multi)),
            "images_in_clusters": int(multi.sum()),
            "largest": int(sizes.max()) if len(sizes) else 0,
            "linked_pairs": self.linked_pairs,
            "refused_by_cap": self.refused_by_cap,
        }


def cluster(
    sigs: np.ndarray,
    *,
    similarity: float,
    max_group: int,
    start: np.ndarray | None = None,
) -> Clusters:
    """Capped single-linkage clusters of near-duplicate images.

    Args:
        sigs: signatures (rows of :func:`signatures`).
        similarity: the least correlation that links two images.
        max_group: no merge may make a cluster larger than this.
        start: initial cluster per image (e.g. the frames of one file); these are never split.

    Returns:
        The clusters, with how many pairs were linked and how many merges the cap refused.
    """
    n = sigs.shape[1]
    initial = np.arange(n) if start is None else np.unique(start, return_inverse=True)[1]
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    first_of: dict[int, int] = {}
    for row, group in enumerate(initial):  # pre-merge the start clusters
        root = first_of.setdefault(int(group), row)
        if root != row:
            parent[row] = root
            size[root] += 1

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    # A union-find of its own, not scipy's connected_components: the size cap decides merge by
    # merge, the most similar pairs first, which a components search over all links cannot.
    i, j, s = similar_pairs(sigs, similarity=similarity, neighbours=NEIGHBOURS)
    refused = 0
    for edge in np.argsort(-s, kind="stable"):  # most similar first
        a, b = find(int(i[edge])), find(int(j[edge]))
        if a == b:
            continue
        if size[a] + size[b] > max_group:
            refused += 1
            continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]
    roots = np.array([find(a) for a in range(n)], np.int64)
    labels = np.unique(roots, return_inverse=True)[1] if n else roots
    return Clusters(labels, similarity, max_group, int(len(s)), refused)
