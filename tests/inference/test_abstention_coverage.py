"""On held-out data (the demo run's test split) the threshold fitted on validation for
``abstain.coverage=0.9`` answers about 90 % of the images.

Tolerance: the fitted threshold is a validation quantile and the realised coverage a test
proportion, so the difference has a standard deviation of about
``sqrt(c (1 - c) (1 / n_val + 1 / n_test))`` (~0.04 for the demo's ~120 + ~120 images); the test
allows 3 of those plus one validation image of discreteness (~0.13 here).
"""

from __future__ import annotations

import math

import pandas as pd

from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.tracking.model_lookup import run_artifact
from tests.inference.conftest import DemoSweep


def test_realised_coverage_on_the_demo_test_split(demo_sweep: DemoSweep) -> None:
    run_id = demo_sweep.run_ids[1]
    predictor = SkinLesionPredictor.from_run(run_id, demo_sweep.uri, device="cpu")
    target = 0.9
    assert predictor.abstention.target == {"coverage": target}
    test = pd.read_csv(run_artifact(run_id, "splits/test.csv", demo_sweep.uri))
    results = predictor.predict_batch(test["path"].tolist(), batch_size=64)
    assert all(set(r["reasons"]) <= {"low_confidence"} for r in results)  # demo images pass
    coverage = sum(r["decision"] == "predict" for r in results) / len(results)
    n_val = load_checkpoint(predictor.checkpoint_path)["abstention"]["val"]["n"]
    tolerance = 3 * math.sqrt(target * (1 - target) * (1 / n_val + 1 / len(test))) + 1 / n_val
    assert abs(coverage - target) <= tolerance, (coverage, tolerance, n_val, len(test))
