"""Figures written as files: matplotlib with a file-only backend, saved atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medml.io import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot with a file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, bottom: float = 0.0) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it; ``bottom`` (a share of the height)
    is kept free for a legend below the axes."""
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return Path(path)
