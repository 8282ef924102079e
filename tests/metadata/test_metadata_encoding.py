"""The patient-metadata encoder: fitted on the training split only, unknown and missing values
explicit, label-leaking columns refused, a plain-dict round trip."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from derm_exp.data.metadata_encoding import MetadataEncoder, MetadataError, check_columns
from derm_exp.training.data_setup import fit_metadata_encoder
from tests.conftest import compose_train

COLUMNS = ("age", "sex", "localization")


def split_frame() -> pd.DataFrame:
    """Train rows aged 20-40 on back/face; val/test rows much older, on body sites (and a sex)
    that training never saw."""
    rows = [
        ("train", 20, "male", "back"),
        ("train", 40, "female", "face"),
        ("train", None, "unknown", "back"),
        ("val", 80, "male", "scalp"),
        ("test", 90, "other", "ear"),
    ]
    return pd.DataFrame(rows, columns=["split", "age", "sex", "localization"])


def test_encoder_is_fitted_on_the_training_split_only() -> None:
    cfg = compose_train(["model=tiny", "model.metadata=concat"])
    encoder = fit_metadata_encoder(split_frame(), cfg.model)
    assert encoder is not None
    assert encoder.columns == COLUMNS
    assert encoder.age_mean == pytest.approx(30.0)  # (20 + 40) / 2: val/test ages left out
    assert encoder.age_std == pytest.approx(10.0)
    assert encoder.categories == {"sex": ("female", "male"), "localization": ("back", "face")}


def test_image_only_models_fit_no_encoder() -> None:
    cfg = compose_train(["model=tiny"])
    assert cfg.model.metadata.method == "none"
    assert fit_metadata_encoder(split_frame(), cfg.model) is None


def test_unseen_values_get_the_unknown_code_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    encoder = MetadataEncoder.fit(split_frame().query("split == 'train'"), COLUMNS)
    frame = pd.DataFrame({"age": [50, 60], "sex": ["male", "male"], "localization": ["ear"] * 2})
    with caplog.at_level(logging.WARNING, logger="derm_exp.data.metadata_encoding"):
        x = encoder.encode_frame(frame)
    assert [r.getMessage().count("'ear'") for r in caplog.records] == [1]
    names = encoder.feature_names
    for row in x:
        assert row[names.index("localization_unknown")] == 1
        assert row[names.index("localization_missing")] == 0
        assert sum(row[names.index(f"localization={v}")] for v in ("back", "face")) == 0


def test_missing_values_are_flagged_not_silently_averaged() -> None:
    encoder = MetadataEncoder.fit(split_frame().query("split == 'train'"), COLUMNS)
    names = encoder.feature_names
    x = encoder.encode_records(
        [{"age": None, "sex": "unknown", "localization": ""}, {"age": 30, "sex": "male"}]
    )
    assert x[0, names.index("age_missing")] == 1 and x[0, names.index("age")] == 0
    assert x[0, names.index("sex_missing")] == 1
    assert x[0, names.index("localization_missing")] == 1
    # An age at the training mean is 0 too, but without the missing flag.
    assert x[1, names.index("age")] == 0 and x[1, names.index("age_missing")] == 0
    assert x[1, names.index("localization_missing")] == 1  # not given = missing
    assert x[1, names.index("sex=male")] == 1
    np.testing.assert_array_equal(encoder.missing_vector(), encoder.encode_records([{}])[0])


@pytest.mark.parametrize("column", ["dx_type", "dx", "lesion_id"])
def test_label_leaking_columns_are_refused(column: str) -> None:
    with pytest.raises(MetadataError, match=column):
        check_columns(["age", column])
    encoder = MetadataEncoder.fit(split_frame(), COLUMNS)
    with pytest.raises(MetadataError, match="refused"):
        encoder.encode_records([{column: "histo"}])


def test_bad_columns_and_values_are_clear_errors() -> None:
    with pytest.raises(MetadataError, match="unknown column 'agee'"):
        check_columns(["agee"])
    encoder = MetadataEncoder.fit(split_frame(), COLUMNS)
    with pytest.raises(MetadataError, match="unknown metadata field 'site'"):
        encoder.encode_records([{"site": "back"}])
    with pytest.raises(MetadataError, match="age must be a number"):
        encoder.encode_records([{"age": "old"}])
    for age in ("-1", "121", "inf", 250):  # typos are refused, in a CSV or a call alike
        with pytest.raises(MetadataError, match="age must be 0 to 120 years"):
            encoder.encode_records([{"age": age}])
    assert encoder.encode_records([{"age": 0}, {"age": "120"}]).shape[0] == 2


def test_plain_dict_round_trip_gives_the_same_encoding() -> None:
    frame = split_frame()
    encoder = MetadataEncoder.fit(frame.query("split == 'train'"), ["localization", "age"])
    back = MetadataEncoder.from_dict(encoder.to_dict())
    assert back == encoder
    np.testing.assert_array_equal(back.encode_frame(frame), encoder.encode_frame(frame))
    # Records (the predictor's input) encode exactly as frame rows (evaluation's input).
    records = frame[["age", "sex", "localization"]].to_dict("records")
    np.testing.assert_array_equal(encoder.encode_records(records), encoder.encode_frame(frame))
    with pytest.raises(MetadataError, match="version"):
        MetadataEncoder.from_dict({**encoder.to_dict(), "version": 99})
