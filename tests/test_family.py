"""The family-wise claim of harness.analysis.sequential.family by simulation, in brief
(scripts/simulate_verdicts.py makes it at length): studies resampled from the JSB reference
study's 50 vanilla and 50 NOAF trials (tests/data/jsb_reference_test_metrics.json), a look
every 10 trials a variant up to a cap of 100."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.analysis import sequential

REFERENCE = json.loads((Path(__file__).parent / "data" / "jsb_reference_test_metrics.json").read_text())
VANILLA = np.array(REFERENCE["vanilla"], dtype=float)
NOAF = np.array(REFERENCE["noaf"], dtype=float)
NOAF[NOAF > 10 * np.median(VANILLA)] = np.nan  # diverged: docs/analysis.md, "Diverged trials" (9 of 50)
LOOKS = list(range(10, 101, 10))
CAP = 100
STUDIES = 400
ALPHA = 0.05
MC = math.sqrt(ALPHA * (1 - ALPHA) / STUDIES)  # Monte Carlo error of a rate near alpha


@pytest.fixture(scope="module")
def null_family():
    """Vanilla and 8 variants drawn as vanilla is, (studies, trials) each, each value moved by
    a uniform 1e-6 so that none are tied, as real metrics are not (resampling 50 values ties
    many across the arms, which the statistic counts against the claim: conservative)."""
    rng = np.random.default_rng(34)

    def drawn():
        return rng.choice(VANILLA, size=(STUDIES, CAP)) + rng.uniform(-1e-6, 1e-6, size=(STUDIES, CAP))
    vanilla = drawn()
    return vanilla, {f"null{i}": drawn() for i in range(8)}


def any_different(found: dict) -> np.ndarray:
    """Per study: some variant's verdict at the last look is worse or better."""
    return np.column_stack([np.isin(v[:, -1], ("worse", "better")) for v in found.values()]).any(axis=1)


def test_holm_holds_the_family_wise_level_over_eight_null_variants(null_family):
    vanilla, nulls = null_family
    rates = {multiplicity: any_different(sequential.family(vanilla, nulls, looks=LOOKS, alpha=ALPHA, cap=CAP,
                                                           multiplicity=multiplicity)).mean()
             for multiplicity in ("holm", "none")}
    assert rates["holm"] <= ALPHA + 3 * MC
    # eight comparisons at alpha each: 1 - 0.95^8 = 0.34 were they independent, less as they share vanilla
    assert rates["none"] >= 0.15
    assert rates["holm"] <= rates["none"] / 2


def test_a_noaf_like_variant_is_found_worse_among_seven_null_ones(null_family):
    vanilla, nulls = null_family
    noaf = np.random.default_rng(35).choice(NOAF, size=(STUDIES, CAP))
    family = {**dict(list(nulls.items())[:7]), "noaf": noaf}
    found = sequential.family(vanilla, family, looks=LOOKS, alpha=ALPHA, margin=0.3, cap=CAP)
    assert (found["noaf"][:, -1] == "worse").mean() >= 0.95
    assert (found["noaf"] == "better").sum() == 0
