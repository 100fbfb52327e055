"""Use-time governance: a champion moved with the plain MLflow client is refused by
``medml predict`` and reported by ``medml audit verify``; the audit chain is keyed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from medml import serving
from medml.cli import app
from medml.promotion import UnreviewedChampion, champion_backed_by_audit, promote
from medml.tracking import Tracking
from tests.integration.test_governance import NAME, _versions

pytestmark = pytest.mark.integration


class _FakeClassifier:
    """Stands in for the registered pyfunc (the registry, not the model, is under test)."""

    classes = ["a", "b"]

    def predict(self, context: Any, frame: pd.DataFrame) -> pd.DataFrame:
        rows = len(frame)
        return pd.DataFrame({"label": ["a"] * rows, "p_a": [0.9] * rows, "p_b": [0.1] * rows,
                             "error": [""] * rows})  # fmt: skip


@pytest.fixture()
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the URIs predict loads, and load the stand-in classifier."""
    uris: list[str] = []

    def load(uri: str) -> _FakeClassifier:
        uris.append(uri)
        return _FakeClassifier()

    monkeypatch.setattr(serving, "load_classifier", load)
    return uris


def _predict(tracking: Tracking, tmp_path: Path, *extra: str) -> Any:
    source = tmp_path / "images"
    source.mkdir(exist_ok=True)
    (source / "x.png").write_bytes(b"not read by the stand-in")
    return CliRunner().invoke(app, ["predict", "--model", f"{NAME}@champion", "--source",
                                    str(source), "--out", str(tmp_path / "p.csv"),
                                    "--tracking-uri", tracking.uri, *extra])  # fmt: skip


def _verify(tracking: Tracking) -> Any:
    return CliRunner().invoke(app, ["audit", "verify", NAME, "--tracking-uri", tracking.uri])


def test_out_of_band_champion_is_refused_at_use_time(tmp_path: Path, loaded: list[str]) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 3)
    promote(tracking, NAME, "1", reviewer="alice", reason="first")
    assert champion_backed_by_audit(tracking, NAME) == "1"
    result = _predict(tracking, tmp_path)
    assert result.exit_code == 0, result.output
    assert loaded == [f"models:/{NAME}/1"]  # the checked version, not the alias

    tracking.activate().set_registered_model_alias(NAME, "champion", "3")  # plain client
    result = _predict(tracking, tmp_path)
    assert result.exit_code == 5, result.output
    line = result.output.strip()
    assert "points at v3" in line and "made v1 champion" in line and "medml promote" in line
    assert len(line.splitlines()) == 1 and len(loaded) == 1  # one line; nothing loaded
    result = _verify(tracking)
    assert result.exit_code == 6 and "points at v3" in result.output, result.output

    with pytest.raises(UnreviewedChampion, match="v3"):
        champion_backed_by_audit(tracking, NAME)
    promote(tracking, NAME, "2", reviewer="alice", reason="through the reviewed path")
    assert champion_backed_by_audit(tracking, NAME) == "2"
    assert _verify(tracking).exit_code == 0


def test_allow_unreviewed_warns_and_proceeds(tmp_path: Path, loaded: list[str]) -> None:
    tracking = Tracking.from_env()
    _versions(tracking, 2)
    tracking.activate().set_registered_model_alias(NAME, "champion", "2")  # never promoted
    assert _predict(tracking, tmp_path).exit_code == 5
    result = _predict(tracking, tmp_path, "--allow-unreviewed")
    assert result.exit_code == 0, result.output
    assert "warning: using an unreviewed champion" in result.output
    assert "no promotion event" in result.output and "wrote 1 predictions" in result.output
    assert loaded == [f"models:/{NAME}@champion"]
