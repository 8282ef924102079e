"""load_metadata / validate_dataset on small hand-made HAM10000-format folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from derm_exp.data.metadata import (
    CLASS_DESCRIPTIONS,
    CLASSES,
    DataValidationError,
    load_metadata,
)
from derm_exp.data.validation import validate_dataset


def test_classes_fixed_order_and_descriptions() -> None:
    assert CLASSES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert set(CLASS_DESCRIPTIONS) == set(CLASSES)
    assert CLASS_DESCRIPTIONS["mel"] == "Melanoma"


@pytest.mark.parametrize("layout", ["images", "parts"])
def test_loads_valid_dataset(make_dataset, balanced_rows, layout: str) -> None:
    rows = balanced_rows()
    root = make_dataset(rows, layout=layout)
    df = load_metadata(root)
    assert len(df) == len(rows)
    assert {"lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"} <= set(df)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert [CLASSES[i] for i in df["label"]] == list(df["dx"])
    assert df["age"].dtype.kind == "f"
    if layout == "parts":
        assert {Path(p).parent.name for p in df["path"]} == {
            "HAM10000_images_part_1",
            "HAM10000_images_part_2",
        }


def test_dx_is_normalised(make_dataset, csv_header) -> None:
    csv = f"{csv_header}\nHAM_1, ISIC_1 , NV ,histo,50,male,back\n"
    root = make_dataset([("HAM_1", "ISIC_1", "nv")], csv_text=csv)
    df = load_metadata(root)
    assert df.loc[0, "dx"] == "nv" and df.loc[0, "image_id"] == "ISIC_1"


def _error(root: Path) -> str:
    with pytest.raises(DataValidationError) as info:
        load_metadata(root)
    return str(info.value)


def test_missing_column(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv")], csv_text="lesion_id,image_id,age\nL1,I1,50\n")
    assert "lacks required column(s) ['dx']" in _error(root)


def test_unknown_dx(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv"), ("L2", "I2", "melanoma")])
    msg = _error(root)
    assert "unknown dx label(s) 'melanoma': 1" in msg and "CSV lines 3" in msg


def test_duplicate_image_id(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv"), ("L2", "I1", "nv")], images=["I1"])
    assert "appear in more than one row: I1" in _error(root)


@pytest.mark.parametrize("bad_id", ["../I1", "sub/I1", "sub\\I1"])
def test_image_id_with_path_parts(make_dataset, bad_id: str) -> None:
    root = make_dataset([("L1", bad_id, "nv"), ("L2", "I2", "nv")], images=["I2"])
    assert "path separator or '..'" in _error(root)


def test_missing_image_is_fatal(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv"), ("L2", "I2", "mel")], images=["I1"])
    msg = _error(root)
    assert "1 metadata row(s) have no image file: I2" in msg
    report = validate_dataset(root, check_images=False)
    assert not report.ok and report.missing_images == ["I2"]


def test_extra_image_is_a_warning(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv")], images=["I1", "EXTRA"])
    assert list(load_metadata(root)["image_id"]) == ["I1"]
    report = validate_dataset(root, check_images=False)
    assert report.ok and report.extra_images == ["EXTRA"]
    assert "Extra images (files without a row): 1" in report.format()


def test_empty_csv(make_dataset, csv_header) -> None:
    assert "is empty" in _error(make_dataset([], csv_text=""))
    assert "no rows" in _error(make_dataset([], csv_text=csv_header + "\n"))


def test_empty_cells(make_dataset, csv_header) -> None:
    root = make_dataset([("L1", "I1", "nv")], csv_text=f"{csv_header}\n,I1,nv,histo,1,male,back\n")
    assert "column 'lesion_id' is empty in 1 row(s) (CSV lines 2)" in _error(root)


def test_missing_folder_and_files(tmp_path: Path, make_dataset) -> None:
    assert "does not exist" in _error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "metadata file" in _error(tmp_path / "empty")
    root = make_dataset([("L1", "I1", "nv")], images=[])
    (root / "images").rmdir()
    assert "no image folder" in _error(root)


def test_load_metadata_does_not_decode_images(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv"), ("L2", "I2", "mel")])
    (root / "images" / "I2.jpg").write_bytes(b"")  # unreadable, but present
    assert len(load_metadata(root)) == 2


def test_validate_reports_unreadable_images(make_dataset, balanced_rows) -> None:
    root = make_dataset(balanced_rows(3, 1))
    bad = root / "images" / "ISIC_00000.jpg"
    bad.write_bytes(b"")
    report = validate_dataset(root, progress=False)
    assert report.ok and report.unreadable_images == [str(bad)]
    assert report.class_counts == dict.fromkeys(CLASSES, 3)
    assert report.lesion_counts == dict.fromkeys(CLASSES, 3)
    assert "Unreadable images: 1" in report.format()
    strict = validate_dataset(root, unreadable_fatal=True, progress=False)
    assert not strict.ok and "cannot be decoded: ISIC_00000.jpg" in strict.format()


def test_every_problem_is_reported_in_one_pass(make_dataset, csv_header) -> None:
    rows = [
        ",I1,nv",  # empty lesion_id (line 2)
        "L2,I2,melanoma",  # unknown label (line 3)
        "L3,I3,mel",
        "L4,I3,mel",  # I3 listed twice
        "L5,I5,bcc",  # no image file
        "L6,../I6,bcc",  # a path in image_id
    ]
    csv = "\n".join([csv_header, *(f"{r},histo,50,male,back" for r in rows)]) + "\n"
    root = make_dataset([], images=["I1", "I2", "I3", "I9"], csv_text=csv)
    report = validate_dataset(root, check_images=False)
    assert not report.ok and report.frame is None
    problems = "\n".join(report.fatal)
    assert "column 'lesion_id' is empty in 1 row(s) (CSV lines 2)" in problems
    assert "unknown dx label(s) 'melanoma': 1" in problems
    assert "appear in more than one row: I3" in problems
    assert "path separator or '..': ../I6" in problems
    assert "have no image file: ../I6, I5" in problems
    assert len(report.fatal) == 5
    assert report.image_dirs == ["images"] and report.extra_images == ["I9"]
    assert report.class_counts["mel"] == 2 and report.n_rows == 6
    text = report.format()
    assert "Image folders: images" in text and "Unknown labels: 'melanoma': 1" in text


def test_image_folders_are_reported_without_a_usable_metadata_file(make_dataset) -> None:
    root = make_dataset([("L1", "I1", "nv")], csv_text="lesion_id,image_id\nL1,I1\nL2,I2\n")
    report = validate_dataset(root, check_images=False)
    assert report.image_dirs == ["images"] and report.missing_images == ["I2"]
    assert any("lacks required column(s) ['dx']" in p for p in report.fatal)
    (root / "HAM10000_metadata.csv").unlink()
    report = validate_dataset(root, check_images=False)
    assert report.image_dirs == ["images"] and len(report.fatal) == 1
    assert "metadata file" in report.fatal[0]
