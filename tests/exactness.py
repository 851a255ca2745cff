"""Statistical comparison of pooled engine runs with exact answers.

Runs are pooled with evidence weights, ``p_a = sum_k u_k(a) / sum_k v_k`` with
``v_k`` the mean weight of run ``k`` and ``u_k(a)`` its mean weight on answer
``a``. Its standard error comes from the spread of the runs (delta method for
a ratio of means), so tolerances shrink with the number of runs.
"""

from __future__ import annotations

import math

import numpy as np


def pooled_estimate(posterior) -> tuple[dict, dict]:
    """Pooled answer probabilities and their standard errors, from independent runs."""
    runs = posterior.num_runs
    shift = np.max(posterior.log_weights[np.isfinite(posterior.log_weights)])
    weights = np.exp(posterior.log_weights - shift)
    answers = sorted(set(posterior.answers) - {None}, key=repr)
    v = np.array([weights[posterior.run_index == k].mean() for k in range(runs)])
    estimate, stderr = {}, {}
    for answer in answers:
        hits = np.array([a == answer for a in posterior.answers])
        u = np.array([(weights * hits)[posterior.run_index == k].mean() for k in range(runs)])
        p = u.sum() / v.sum()
        residual = u - p * v
        estimate[answer] = p
        stderr[answer] = math.sqrt(np.sum(residual**2) / (runs * (runs - 1))) / v.mean()
    return estimate, stderr


def assert_matches_exact(posterior, exact: dict, *, z_max: float = 4.5, min_p: float = 0.02):
    """Total variation within 3 standard errors, and no answer off by more than ``z_max`` SE.

    The TV standard error is taken as half the sum of the per-answer standard
    errors (an upper bound on the spread of the L1 error's terms).
    """
    estimate, stderr = pooled_estimate(posterior)
    answers = set(exact) | set(estimate)
    tv = 0.5 * sum(abs(estimate.get(a, 0.0) - exact.get(a, 0.0)) for a in answers)
    se_tv = 0.5 * sum(stderr.values())
    assert tv <= 3 * se_tv, f"TV {tv:.4f} > 3 SE ({se_tv:.4f})"
    for answer, p in exact.items():
        if p >= min_p:
            z = abs(estimate.get(answer, 0.0) - p) / max(stderr.get(answer, 0.0), 1e-12)
            assert z <= z_max, (
                f"answer {answer!r}: estimate {estimate.get(answer)} vs {p}, z={z:.1f}"
            )


def assert_unbiased_evidence(posterior, log_z: float):
    """Mean of Z_hat / Z over the runs within 3 standard errors of 1."""
    ratios = np.exp(posterior.log_evidences - log_z)
    mean = ratios.mean()
    se = ratios.std(ddof=1) / math.sqrt(len(ratios))
    assert abs(mean - 1.0) <= 3 * se, f"mean Z_hat/Z = {mean:.4f}, SE {se:.4f}"
