"""Is a lift real? Paired comparisons of two arms over the same evaluation users.

Pairing: each seed of an arm is set against the same seed of the baseline (same data order and initial
draw), and each user's metric difference is averaged over the seeds; the tests then run over users, which
carry the sample's variance (a handful of seeds cannot). Two answers, both two-sided:
- a paired t-test (scipy.stats.ttest_1samp of the per-user differences against 0);
- a percentile bootstrap over users of the mean difference (95% interval, seeded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PairedLift:
    users: int
    seeds: int
    mean_diff: float  # mean over users of (arm - baseline), each user's difference averaged over seeds
    relative: float  # mean_diff / the baseline's mean
    t_p_value: float  # paired t-test, two-sided
    ci_low: float  # bootstrap 95% interval of mean_diff
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_lift(arm: list[np.ndarray], baseline: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> PairedLift:
    """arm, baseline: per seed (paired by position), per-user metric arrays over the same users in the same order."""
    from scipy import stats

    if len(arm) != len(baseline) or not arm:
        raise ValueError(f"paired seeds needed: {len(arm)} arm runs vs {len(baseline)} baseline runs")
    if len({a.shape for a in arm} | {b.shape for b in baseline}) != 1:
        raise ValueError("per-user arrays differ in length: the arms were not evaluated on the same users")
    diff = np.mean([a.astype(np.float64) - b for a, b in zip(arm, baseline)], axis=0)  # (U,)
    base = float(np.mean([b.mean() for b in baseline]))
    t_p = float(stats.ttest_1samp(diff, 0.0).pvalue) if diff.std() > 0 else (1.0 if diff.mean() == 0 else 0.0)
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(n_boot)])
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedLift(
        users=int(diff.size),
        seeds=len(arm),
        mean_diff=float(diff.mean()),
        relative=float(diff.mean() / base) if base else float("nan"),
        t_p_value=t_p,
        ci_low=float(low),
        ci_high=float(high),
    )
