"""The learnable phantom anatomy (the demo's): same labels and draws, the small organs grown."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_poolskip.dataset_conversion.phantoms import ANATOMY_SCALES, synthesize_case, write_phantoms

DEMO_SIZE = (24, 40, 40)


def test_learnable_grows_the_small_organs_and_keeps_the_rest():
    standard = synthesize_case("btcv", 1, 0, DEMO_SIZE)
    assert np.array_equal(standard.image, synthesize_case("btcv", 1, 0, DEMO_SIZE, "standard").image)
    learnable = synthesize_case("btcv", 1, 0, DEMO_SIZE, "learnable")
    # the geometry comes from the same random draws
    assert (learnable.spacing, learnable.origin, learnable.direction) == (standard.spacing, standard.origin,
                                                                         standard.direction)
    before = np.bincount(standard.label.ravel(), minlength=14)
    after = np.bincount(learnable.label.ravel(), minlength=14)
    assert set(np.unique(learnable.label)) == set(range(14))
    # the grown organs: adrenal glands 12/13, portal and splenic veins 10, esophagus 5 (volume ~ factor^3 for
    # ellipsoids, ~ factor^2 for tubes, less what earlier organs already took)
    for label in (5, 10, 12, 13):
        assert after[label] >= 2 * before[label], (label, before[label], after[label])
    for label in (4, 8):  # gallbladder (x1.5), aorta (x1.4)
        assert after[label] > before[label], label
    assert abs(int(after[6]) - int(before[6])) < 0.2 * before[6]  # the liver keeps about its size
    assert ANATOMY_SCALES["standard"] == {}


def test_unknown_anatomy_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom anatomy 'huge'; choose one of"):
        write_phantoms("btcv", tmp_path / "out", cases=1, size=DEMO_SIZE, anatomy="huge", progress=False)
    assert not (tmp_path / "out").exists()
