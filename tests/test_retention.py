"""trainer/retention.py: the modality-forgetting measure reads 1.0 for an untouched table, falls with drift,
and ignores content-less rows."""
from __future__ import annotations

import pytest
import torch

from trainer.retention import table_retention


def test_untouched_or_rescaled_table_kept_everything():
    x = torch.randn(500, 16)
    assert table_retention(x, x) == pytest.approx((1.0, 1.0), abs=1e-5)
    assert table_retention(x, 3.0 * x) == pytest.approx((1.0, 1.0), abs=1e-5)  # cosines ignore the scale


def test_drift_lowers_both_measures_and_noise_keeps_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g)
    small = table_retention(x, x + 0.3 * torch.randn(2000, 16, generator=g))
    large = table_retention(x, x + 1.5 * torch.randn(2000, 16, generator=g))
    unrelated = table_retention(x, torch.randn(2000, 16, generator=g))
    assert 1.0 > small[0] > large[0] > unrelated[0] and 1.0 > small[1] > large[1] > unrelated[1]
    assert abs(unrelated[0]) < 0.05 and abs(unrelated[1]) < 0.05


def test_content_less_rows_are_left_out():
    x = torch.randn(300, 8)
    trained = x.clone()
    x[:100] = 0.0  # masked items start at zero; whatever they learn says nothing about forgetting
    trained[:100] = torch.randn(100, 8)
    assert table_retention(x, trained) == pytest.approx((1.0, 1.0), abs=1e-5)
