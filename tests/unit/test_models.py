from __future__ import annotations

import numpy as np
import pytest

from medml.models import build_ensemble, build_small_cnn


def test_ensemble_averages_member_softmax() -> None:
    members = [build_small_cnn((16, 16, 1), 3, name=f"fold_{i}") for i in range(3)]
    ensemble = build_ensemble(members)
    x = np.random.default_rng(0).integers(0, 255, size=(5, 16, 16, 1)).astype("uint8")
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_classes must be at least 2, got 1"):
        build_small_cnn((16, 16, 1), 1)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_small_cnn((16, 16, 1), 2, dropout=1.5)
    with pytest.raises(ValueError, match="at least one member"):
        build_ensemble([])
