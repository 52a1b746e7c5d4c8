"""Independent check of bench-client's uncertainty of one evaluation (bench-client/src/uncertainty.rs).

Reads the JSON cases that bench-client/tests/uncertainty_reference.rs writes (per case the counts,
every resampled position, and what Rust made of them) and recomputes with scipy and numpy:
- Clopper-Pearson intervals with scipy.stats.beta.ppf (0 at k = 0, 1 at k = n), to 1e-9;
- from the SAME resampled positions: each resample's correct counts (positions below k), Avg,
  Worst, Worst-10% and NSD, numpy's percentile interval, the measured values, the reported worst
  class (lowest k/n, first on a tie) and every class's share of being the worst (ties share 1/m,
  compared exactly as fractions), to 1e-9;
- that the positions are a stratified resample: n_c positions in [0, n_c) per class, and over all
  resamples about k/n of them below k.
Exits 1 with every mismatch listed, else prints a line per case.
"""

import json
import math
import sys
from fractions import Fraction

import numpy as np
from scipy.stats import beta

TOLERANCE = 1e-9


def clopper_pearson(k, n, confidence):
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else beta.ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(1 - alpha / 2, k + 1, n - k)
    return low, high


def metrics(accuracy):
    """Avg, Worst, Worst-10% and NSD of each row of class-wise accuracies (percent)."""
    classes = accuracy.shape[1]
    average = accuracy.mean(axis=1)
    lowest = max(1, math.ceil(0.1 * classes))
    sd = accuracy.std(axis=1)  # population SD (divides by C)
    with np.errstate(divide="ignore", invalid="ignore"):
        nsd = np.where(average == 0, np.where(sd == 0, 0.0, np.inf), sd / average)
    return {
        "avg": average,
        "worst": accuracy.min(axis=1),
        "worst_10_percent": np.sort(accuracy, axis=1)[:, :lowest].mean(axis=1),
        "nsd": nsd,
    }


def lowest_classes(correct, total):
    ratios = [Fraction(k, n) for k, n in zip(correct, total)]
    low = min(ratios)
    return [c for c, r in enumerate(ratios) if r == low]


def check(case, problems, name):
    correct = np.array(case["correct"], dtype=np.int64)
    total = np.array(case["total"], dtype=np.int64)
    confidence = case["confidence"]
    resamples = case["resamples"]

    def close(what, got, expected):
        if got is None or not math.isfinite(got) or abs(got - expected) > TOLERANCE:
            problems.append(f"{name}: {what}: bench-client {got}, reference {expected}")

    for c, ((k, n), (low, high)) in enumerate(zip(zip(correct, total), case["clopper_pearson"])):
        ref_low, ref_high = clopper_pearson(int(k), int(n), confidence)
        close(f"class {c} ({k}/{n}) Clopper-Pearson low", low / 100.0, ref_low)
        close(f"class {c} ({k}/{n}) Clopper-Pearson high", high / 100.0, ref_high)

    positions = case["positions"]
    if len(positions) != resamples:
        problems.append(f"{name}: {len(positions)} resamples, expected {resamples}")
        return
    counts = np.zeros((resamples, len(total)), dtype=np.int64)
    below = np.zeros(len(total))
    for r, resample in enumerate(positions):
        for c, drawn in enumerate(resample):
            drawn = np.array(drawn, dtype=np.int64)
            if len(drawn) != total[c] or (len(drawn) and (drawn.min() < 0 or drawn.max() >= total[c])):
                problems.append(f"{name}: resample {r} class {c}: {len(drawn)} positions outside [0, {total[c]})")
                return
            counts[r, c] = int((drawn < correct[c]).sum())
    for c in range(len(total)):
        share = counts[:, c].sum() / (resamples * total[c])
        if abs(share - correct[c] / total[c]) > 0.03:
            problems.append(f"{name}: class {c}: {share:.3f} of the drawn positions correct, expected about {correct[c] / total[c]:.3f}")

    measured = metrics((100.0 * correct / total)[None, :])
    boot = metrics(100.0 * counts / total[None, :])
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    for key, values in boot.items():
        low, high = np.percentile(values, q)  # numpy's default: linear interpolation
        got = case["bootstrap"][key]
        close(f"{key} measured", got["estimate"], float(measured[key][0]))
        close(f"{key} bootstrap low", got["low"], float(low))
        close(f"{key} bootstrap high", got["high"], float(high))

    worst = lowest_classes(correct.tolist(), total.tolist())[0]
    if case["worst_class"] != worst:
        problems.append(f"{name}: reported worst class {case['worst_class']}, reference {worst}")
    share = np.zeros(len(total))
    for row in counts:
        lowest = lowest_classes(row.tolist(), total.tolist())
        for c in lowest:
            share[c] += 1.0 / len(lowest)
    share /= resamples
    for c in range(len(total)):
        close(f"class {c} share of being the worst", case["worst_share"][c], float(share[c]))
    print(f"{name}: {len(total)} classes, {resamples} resamples: Clopper-Pearson, bootstrap intervals and P(worst) "
          f"agree (P(worst class {worst} is the worst) = {share[worst]:.4f})")


def main():
    cases = json.load(open(sys.argv[1]))
    problems = []
    for name, case in cases.items():
        check(case, problems, name)
    if problems:
        print("\n".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
