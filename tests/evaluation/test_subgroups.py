"""Subgroup evaluation: per-group metrics, sizes, flags, gaps, table, plot and metadata join."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derm_exp.data.metadata_join import metadata_csv_for, with_patient_metadata
from derm_exp.errors import ConfigError
from derm_exp.evaluation.metrics import balanced_accuracy, classification_metrics
from derm_exp.evaluation.subgroup_plots import plot_subgroups
from derm_exp.evaluation.subgroup_report import gaps_line, subgroup_report, subgroup_settings
from derm_exp.evaluation.subgroups import (
    age_band,
    evaluate_subgroups,
    fast_balanced_accuracy,
    gap_metrics,
    markdown_table,
    subgroup_table,
    subgroup_values,
)

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Labels, probabilities (better than chance), 2 images per lesion, and metadata with a
    tiny body site ("ear": 2 lesions) and missing cells."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n)
    logits = rng.normal(size=(n, 7)) + 1.5 * np.eye(7)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    lesions = np.array([f"L{i // 2}" for i in range(n)])
    lesion_no = np.arange(n) // 2
    meta = pd.DataFrame(
        {
            "image_id": [f"I{i}" for i in range(n)],
            "lesion_id": lesions,
            "age": np.where(lesion_no % 9 == 0, np.nan, 20 + (lesion_no * 7) % 65),
            "sex": np.where(lesion_no % 2 == 0, "male", "female"),
            "localization": np.where(
                lesion_no < 2, "ear", np.where(lesion_no % 3 == 0, "back", "face")
            ),
        }
    )
    meta.loc[4:5, "sex"] = None  # rows 4 and 5: lesion L2 without sex: "unknown"
    return y, p, lesions, meta


def test_age_bands_and_missing_values() -> None:
    cases = {0: "<30", 29.9: "<30", 30: "30-44", 44: "30-44", 45: "45-59", 59: "45-59"}
    cases.update({60: "60-74", 74: "60-74", 75: ">=75", 85: ">=75"})
    assert {a: age_band(a) for a in cases} == cases
    assert age_band(np.nan) == age_band(None) == age_band("") == age_band("n/a") == "unknown"
    values = subgroup_values(pd.DataFrame({"sex": ["male", None, " ", "female"]}))
    assert list(values["sex"]) == ["male", "unknown", "unknown", "female"]
    assert values["age_band"] is None and values["localization"] is None


def test_fast_balanced_accuracy_equals_the_report_definition() -> None:
    rng = np.random.default_rng(1)
    for n in (5, 50, 500):
        y = rng.integers(0, 4, n)  # classes 4-6 absent, and may be predicted
        p = rng.dirichlet(np.ones(7), n)
        assert fast_balanced_accuracy(y, p) == pytest.approx(balanced_accuracy(y, p.argmax(1)))


def test_subgroup_metrics_equal_the_metrics_of_the_filtered_predictions() -> None:
    y, p, lesions, meta = _data()
    section = evaluate_subgroups(
        y, p, lesions, subgroup_values(meta), CLASSES, min_lesions=5, n_boot=50, n_bins=10
    )
    values = subgroup_values(meta)
    n_groups = 0
    for attribute, entry in section["attributes"].items():
        assert entry["available"]
        assert sum(g["n_images"] for g in entry["groups"].values()) == len(y)  # none dropped
        for name, group in entry["groups"].items():
            mask = values[attribute] == name
            expected = classification_metrics(y[mask], p[mask], CLASSES, n_bins=10)
            assert group["n_images"] == mask.sum()
            assert group["n_lesions"] == len(set(lesions[mask]))
            for metric in ("balanced_accuracy", "macro_auc", "ece"):
                got = group["metrics"][metric]["point"]
                want = expected[metric]
                assert got == pytest.approx(want, abs=1e-9) if want is not None else got is None
            assert group["absent_classes"] == expected["absent_classes"]
            assert ("classes_missing" in group["flags"]) == bool(expected["absent_classes"])
            n_groups += 1
    assert n_groups >= 10
    overall = classification_metrics(y, p, CLASSES, n_bins=10)
    assert section["all"]["metrics"]["ece"]["point"] == pytest.approx(overall["ece"])
    assert list(section["attributes"]["age_band"]["groups"])[-1] == "unknown"
    assert section["attributes"]["sex"]["groups"]["unknown"]["n_lesions"] == 1


def test_tiny_subgroups_are_flagged_without_ci_and_kept() -> None:
    y, p, lesions, meta = _data()
    section = evaluate_subgroups(y, p, lesions, subgroup_values(meta), CLASSES, n_boot=50)
    ear = section["attributes"]["localization"]["groups"]["ear"]
    assert (ear["n_images"], ear["n_lesions"]) == (4, 2)
    assert "few_lesions" in ear["flags"]
    assert all(m["low"] is None and m["high"] is None for m in ear["metrics"].values())
    assert ear["metrics"]["balanced_accuracy"]["point"] is not None
    back = section["attributes"]["localization"]["groups"]["back"]
    assert back["n_lesions"] >= 30 and "few_lesions" not in back["flags"]
    for m in back["metrics"].values():
        assert m["low"] <= m["point"] <= m["high"]
    table = subgroup_table(section)
    row = table[(table["attribute"] == "localization") & (table["group"] == "ear")].iloc[0]
    assert "few_lesions" in row["flags"] and pd.isna(row["balanced_accuracy_ci_low"])
    assert "| localization | ear | 4 | 2 |" in markdown_table(section)
    assert "few_lesions" in markdown_table(section)


def test_gaps_use_only_the_groups_large_enough() -> None:
    y, p, lesions, meta = _data()
    perfect = meta["localization"].to_numpy() == "ear"
    p = p.copy()
    p[perfect] = np.eye(7)[y[perfect]] * 0.9 + 0.1 / 7  # the tiny group is perfect
    section = evaluate_subgroups(
        y, p, lesions, subgroup_values(meta), CLASSES, min_lesions=30, n_boot=20
    )
    for entry in section["attributes"].values():
        large = {
            n: g["metrics"]["balanced_accuracy"]["point"]
            for n, g in entry["groups"].items()
            if g["n_lesions"] >= 30
        }
        gap = entry["gaps"]["balanced_accuracy"]
        if len(large) < 2:
            assert gap["value"] is None
            continue
        assert gap["value"] == pytest.approx(max(large.values()) - min(large.values()))
        assert large[gap["max_group"]] == max(large.values())
        assert large[gap["min_group"]] == min(large.values())
    loc = section["attributes"]["localization"]["groups"]
    assert loc["ear"]["metrics"]["balanced_accuracy"]["point"] == 1.0
    assert set(section["attributes"]["localization"]["gaps"]["balanced_accuracy"].values()) & {
        "back",
        "face",
    } == {"back", "face"}
    metrics = gap_metrics(section, "eval/")
    assert metrics["eval/subgroup_gap_balanced_accuracy_localization"] == pytest.approx(
        abs(loc["back"]["metrics"]["balanced_accuracy"]["point"]
            - loc["face"]["metrics"]["balanced_accuracy"]["point"])
    )  # fmt: skip
    assert "eval/subgroup_gap_ece_sex" in metrics
    # The sex group "unknown" (1 lesion) is not in the sex gap either.
    sex = section["attributes"]["sex"]["gaps"]["ece"]
    assert {sex["max_group"], sex["min_group"]} == {"male", "female"}


def test_a_missing_column_is_reported_unavailable() -> None:
    y, p, lesions, meta = _data(n=80)
    section = evaluate_subgroups(
        y, p, lesions, subgroup_values(meta.drop(columns=["age", "sex"])), CLASSES,
        min_lesions=5, n_boot=0,
    )  # fmt: skip
    assert section["attributes"]["age_band"] == {
        "available": False,
        "reason": "no 'age' column in the evaluated data",
    }
    assert section["attributes"]["localization"]["available"]
    table = subgroup_table(section)
    assert table.loc[table["attribute"] == "sex", "flags"].item().startswith("unavailable")
    assert "unavailable: no 'sex' column" in markdown_table(section)
    assert set(gap_metrics(section)) == {
        f"subgroup_gap_{m}_localization" for m in ("balanced_accuracy", "macro_auc", "ece")
    }
    assert "unavailable: sex, age_band" in gaps_line(section)
    plot_subgroups(section)  # draws the available attribute
    nothing = evaluate_subgroups(y, p, lesions, subgroup_values(meta[[]]), CLASSES, n_boot=0)
    assert not any(e["available"] for e in nothing["attributes"].values())
    plot_subgroups(nothing)


def test_lesion_level_report_takes_each_lesions_first_image() -> None:
    y, p, lesions, meta = _data(n=60)
    first = meta.drop_duplicates("lesion_id")
    section = subgroup_report(
        meta,
        y[first.index],
        p[first.index],
        CLASSES,
        settings={"enabled": True, "min_lesions": 3},
        bootstrap={"n_boot": 20, "seed": 0},
        lesion_level=True,
    )
    assert section["all"]["n_images"] == section["all"]["n_lesions"] == 30
    male = section["attributes"]["sex"]["groups"]["male"]
    assert male["n_images"] == (first["sex"] == "male").sum()
    disabled = {"enabled": False, "min_lesions": 3}
    assert subgroup_report(meta, y, p, CLASSES, settings=disabled, bootstrap={}) is None


@pytest.mark.parametrize("settings", [{"min_lesions": 0}, {"min_lesions": 2.5}, {"enabled": "yes"}])
def test_invalid_settings_fail_clearly(settings: dict) -> None:
    with pytest.raises(ConfigError, match="subgroups"):
        subgroup_settings(settings)


def test_patient_metadata_is_joined_by_image_id(tmp_path) -> None:
    csv = tmp_path / "HAM10000_metadata.csv"
    pd.DataFrame(
        {"image_id": ["a", "b"], "age": [40, None], "sex": ["male", "female"], "dx": ["nv", "nv"]}
    ).to_csv(csv, index=False)
    frame = pd.DataFrame({"image_id": ["b", "c", "a"], "lesion_id": ["1", "2", "3"]})
    joined = with_patient_metadata(frame, csv)
    assert list(joined["sex"].fillna("-")) == ["female", "-", "male"]
    assert joined["age"].tolist()[2] == 40 and "localization" not in joined
    assert with_patient_metadata(frame, tmp_path / "absent.csv") is frame
    complete = joined.assign(localization="back")
    assert with_patient_metadata(complete, csv) is complete  # nothing lacking: unchanged
    demo = {"root": None, "demo": {"dir": str(tmp_path)}, "metadata_file": csv.name}
    assert metadata_csv_for(demo) == csv
