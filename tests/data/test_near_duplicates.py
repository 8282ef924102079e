"""Near-duplicate audit: planted copies (resized, re-encoded, flipped) are found, distinct images
are not paired, same-lesion pairs are ignored, grouped splits keep every pair in one split.

The demo dataset's blobs are too alike for a perceptual hash (smooth shapes on plain skin: with
a 64-bit pHash, one pair of different demo lesions came within 4 bits among 300 images), so
these tests draw their own distinct images: random multi-scale colour textures.
"""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from derm_exp.data.near_duplicates import (
    DEFAULT_THRESHOLD,
    PAIR_COLUMNS,
    find_pairs,
    hash_images,
    lesion_groups,
    near_duplicate_pairs,
)
from derm_exp.data.splits import split_dataset, split_from_config

N_DISTINCT = 80
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def field_image(rng: np.random.Generator, size=(200, 150)) -> Image.Image:
    """A random multi-scale colour texture (random grids of 5x4 to 80x60 cells, upsampled and
    summed), with detail at every frequency a 256-bit pHash looks at, like a photograph."""
    total = np.zeros((size[1], size[0], 3))
    for cells, weight in (((5, 4), 1.0), ((20, 15), 0.7), ((80, 60), 0.5)):
        grid = rng.integers(0, 256, size=(cells[1], cells[0], 3), dtype=np.uint8)
        total += weight * np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC))
    return Image.fromarray((total / 2.2).clip(0, 255).astype(np.uint8))


def reencoded(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


PLANTS = {  # copy name -> how the copy is made from its original
    "resized": lambda im: im.resize((120, 90), Image.Resampling.BILINEAR),
    "jpeg_q50": lambda im: reencoded(im, 50),
    "hflip": ImageOps.mirror,
    "vflip": ImageOps.flip,
    "rot180": lambda im: im.rotate(180),
    "upscaled_jpeg": lambda im: reencoded(im.resize((300, 225)), 70),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """N_DISTINCT distinct images (one lesion each) + one planted copy per PLANTS entry under a
    new lesion id, + a same-lesion exact copy (not a cross-lesion pair)."""
    out = tmp_path_factory.mktemp("dups")
    rng = np.random.default_rng(7)
    rows = []
    for i in range(N_DISTINCT):
        path = out / f"IMG_{i:03d}.jpg"
        field_image(rng).save(path, quality=90)
        rows.append((f"IMG_{i:03d}", f"L{i:03d}", CLASSES[i % 7], str(path)))
    for k, (name, make) in enumerate(PLANTS.items()):
        with Image.open(rows[k][3]) as im:
            copy = make(im.convert("RGB"))
        path = out / f"COPY_{name}.jpg"
        copy.save(path, quality=90)
        rows.append((f"COPY_{name}", f"LC{k}", rows[k][2], str(path)))
    same = out / "SAME_LESION.jpg"
    Image.open(rows[10][3]).save(same, quality=90)
    rows.append(("SAME_LESION", rows[10][1], rows[10][2], str(same)))
    frame = pd.DataFrame(rows, columns=["image_id", "lesion_id", "dx", "path"])
    frame["label"] = frame["dx"].map({c: i for i, c in enumerate(CLASSES)})
    return frame


def test_planted_copies_are_found_and_nothing_else(dataset, tmp_path):
    pairs = near_duplicate_pairs(dataset, DEFAULT_THRESHOLD, cache_dir=tmp_path, progress=False)
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    found = {
        frozenset((a, b)) for a, b in zip(pairs["image_id_a"], pairs["image_id_b"], strict=True)
    }
    expected = {frozenset((f"IMG_{k:03d}", f"COPY_{name}")) for k, name in enumerate(PLANTS)}
    assert found == expected  # no distinct pair, no same-lesion pair
    flips = dict(zip(pairs["image_id_b"], pairs["transform"], strict=True))
    assert flips["COPY_hflip"] == "hflip" and flips["COPY_vflip"] == "vflip"
    assert flips["COPY_rot180"] == "rot180" and flips["COPY_resized"] == "none"
    assert (pairs["distance"] <= DEFAULT_THRESHOLD).all()
    assert set(pairs["lesion_id_b"]) == {f"LC{k}" for k in range(len(PLANTS))}


def test_distinct_images_are_far_apart(dataset):
    """The margin behind the threshold: distinct images differ in far more bits."""
    distinct = dataset[dataset["image_id"].str.startswith("IMG_")]
    hashes = hash_images(list(distinct["path"]), progress=False)
    pairs = find_pairs(distinct, hashes, threshold=256)
    assert len(pairs) == N_DISTINCT * (N_DISTINCT - 1) // 2
    assert pairs["distance"].min() > 2 * DEFAULT_THRESHOLD


def test_hash_cache_is_reused_and_invalidated(dataset, tmp_path):
    paths = list(dataset["path"][:5])
    first = hash_images(paths, cache_dir=tmp_path, progress=False)
    (cached,) = (tmp_path / "phash").iterdir()
    np.save(cached, np.zeros_like(first))
    assert (hash_images(paths, cache_dir=tmp_path, progress=False) == 0).all()  # reused
    Image.new("RGB", (20, 20), "white").save(paths[0])  # a changed file: hashed again
    again = hash_images(paths, cache_dir=tmp_path, progress=False)
    assert (again[1:] == first[1:]).all() and not (again[0] == first[0]).all()


def test_lesion_groups_are_transitive():
    pairs = pd.DataFrame({"lesion_id_a": ["B", "C", "X"], "lesion_id_b": ["C", "D", "Y"]})
    groups = lesion_groups(["A", "B", "C", "D", "X", "Y", "Z"], pairs)
    assert groups == {"A": "A", "B": "B", "C": "B", "D": "B", "X": "X", "Y": "X", "Z": "Z"}


def _many_lesions(dataset: pd.DataFrame, n_per_class: int = 12) -> pd.DataFrame:
    """The test images' rows spread over enough lesions per class to split."""
    rows = []
    for c, cls in enumerate(CLASSES):
        for i in range(n_per_class):
            rows.append((f"x{c}_{i}", f"M{c}_{i:02d}", cls, "unused", c))
    extra = pd.DataFrame(rows, columns=["image_id", "lesion_id", "dx", "path", "label"])
    return pd.concat([dataset, extra], ignore_index=True)


@pytest.mark.parametrize("seed", range(5))
def test_grouped_split_keeps_every_pair_together(dataset, seed):
    frame = _many_lesions(dataset)
    pairs = near_duplicate_pairs(dataset, progress=False)
    # chain the pairs' lesions to unrelated ones too: groups must move as a whole
    chain = pd.DataFrame({"lesion_id_a": ["L000", "M5_03"], "lesion_id_b": ["M5_03", "L011"]})
    pairs = pd.concat([pairs, chain], ignore_index=True)
    groups = lesion_groups(frame["lesion_id"].unique(), pairs)
    out = split_dataset(frame, 0.2, 0.2, seed, lesion_groups=groups)
    split_of = dict(zip(out["lesion_id"], out["split"], strict=False))
    for a, b in zip(pairs["lesion_id_a"], pairs["lesion_id_b"], strict=True):
        assert split_of[a] == split_of[b], (a, b)
    assert set(out["split"]) == {"train", "val", "test"}
    for cls in CLASSES:  # still stratified: every class in every split
        assert set(out.loc[out["dx"] == cls, "split"]) == {"train", "val", "test"}


def test_without_groups_the_split_is_unchanged(dataset):
    frame = _many_lesions(dataset)
    plain = split_dataset(frame, 0.2, 0.2, 3)
    singletons = {lesion: lesion for lesion in frame["lesion_id"]}
    assert plain["split"].equals(
        split_dataset(frame, 0.2, 0.2, 3, lesion_groups=singletons)["split"]
    )
    cfg = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 3}
    assert plain["split"].equals(split_from_config(frame, cfg)["split"])


def test_split_from_config_groups_near_duplicates(dataset, tmp_path):
    frame = _many_lesions(dataset)
    cfg = {
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "split_seed": 0,
        "group_near_duplicates": True,
        "near_duplicate_threshold": DEFAULT_THRESHOLD,
        "cache_dir": str(tmp_path),
    }
    real = frame[frame["path"] != "unused"]
    pairs = near_duplicate_pairs(real, progress=False)
    out = split_from_config(frame, cfg, pairs)
    split_of = dict(zip(out["image_id"], out["split"], strict=True))
    for k, name in enumerate(PLANTS):
        assert split_of[f"IMG_{k:03d}"] == split_of[f"COPY_{name}"]
