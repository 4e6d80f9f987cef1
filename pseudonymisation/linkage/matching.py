"""Scoring two encodings: a sum of per-field log-likelihood-style weights.

Each field contributes evidence for (positive) or against (negative) the same person, and
a field missing on either side contributes nothing, so a partial record is neither
punished nor rewarded. Name similarity is the larger of Dice and a damped overlap
coefficient on the Bloom filters: the overlap keeps "García López" close to "García"
(a truncated double name) where Dice alone would halve it. The defaults were calibrated on
`synthetic` data (bench/linkage.py): twins differ by a given name (about -6 from +7),
namesakes by the date of birth, typos cost a few points. Exact names with one differing
date digit sit in the review band (a typo and a namesake born days apart look the same),
unless only a year digit differs: namesakes born the same day of another year are rare,
typos in the year are not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pseudonymisation.encoding import Encoding


@dataclass(frozen=True, slots=True)
class Thresholds:
    """At or above `upper`: same person; below `lower`: another person; between: review."""

    upper: float = 15.0
    lower: float = 9.0


@dataclass(frozen=True, slots=True)
class Weights:
    given: tuple[float, float] = (7.0, -6.0)  # (agree, disagree)
    family: tuple[float, float] = (7.0, -6.0)
    dob_exact: float = 8.0
    dob_swapped: float = 4.0  # day and month exchanged
    dob_year_digit: float = 1.0  # one year digit, same day and month: a typo, not a namesake
    dob_one_digit: float = -1.0  # 7 of 8 digits: a typo, or a namesake born days apart
    dob_two_digits: float = -8.0
    dob_disagree: float = -9.0
    sex: tuple[float, float] = (1.0, -5.0)
    place: tuple[float, float] = (2.0, -1.0)


DEFAULT_WEIGHTS = Weights()
CONTAINED = 0.9
_SIMILARITY_CURVE = ((0.3, 0.0), (0.6, 0.65), (0.9, 1.0))  # similarity -> share of the range


def name_similarity(a: int, b: int) -> float:
    """Dice of two Bloom filters, or 0.95 x overlap where one name is (nearly) contained
    in the other, a truncated double name; 0 if either is empty."""
    na, nb = a.bit_count(), b.bit_count()
    if not na or not nb:
        return 0.0
    common = (a & b).bit_count()
    dice, overlap = 2 * common / (na + nb), common / min(na, nb)
    return max(dice, 0.95 * overlap) if overlap >= CONTAINED else dice


def field_weight(similarity: float, agree: float, disagree: float) -> float:
    """Piecewise-linear from `disagree` (similarity <= 0.3) to `agree` (>= 0.9)."""
    points = _SIMILARITY_CURVE
    if similarity <= points[0][0]:
        share = 0.0
    elif similarity >= points[-1][0]:
        share = 1.0
    else:
        share = next(
            s0 + (s1 - s0) * (similarity - x0) / (x1 - x0)
            for (x0, s0), (x1, s1) in itertools.pairwise(points)
            if similarity <= x1
        )
    return disagree + (agree - disagree) * share


def dob_weight(a: tuple[int | None, ...], b: tuple[int | None, ...], w: Weights) -> float:
    """Compare the digits both sides know; a day/month swap is checked on full dates."""
    known = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not known:
        return 0.0
    differing = sum(x != y for x, y in known)
    if differing == 0:
        return w.dob_exact * len(known) / 8
    if len(known) == 8 and a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return w.dob_swapped
    if differing == 1:
        year_only = all(x == y for x, y in zip(a[4:], b[4:], strict=True))
        return w.dob_year_digit if year_only and len(known) == 8 else w.dob_one_digit
    if differing == 2:
        return w.dob_two_digits
    return w.dob_disagree


def score(a: Encoding, b: Encoding, w: Weights = DEFAULT_WEIGHTS) -> float:
    total = dob_weight(a.dob, b.dob, w)
    for x, y, (agree, disagree) in ((a.given, b.given, w.given), (a.family, b.family, w.family)):
        if x and y:
            total += field_weight(name_similarity(x, y), agree, disagree)
    if a.sex is not None and b.sex is not None:
        total += w.sex[0] if a.sex == b.sex else w.sex[1]
    if a.place and b.place:
        total += field_weight(name_similarity(a.place, b.place), *w.place)
    return total
