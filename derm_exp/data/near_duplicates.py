"""Near-duplicate images across lesion ids: a leakage audit beyond lesion-aware splits.

HAM10000 holds near-identical images filed under *different* lesion ids (Abhishek et al. 2024,
arXiv 2401.14497); a lesion-aware split can then put copies of one picture in train and test.
Each image gets a 256-bit perceptual hash (DCT pHash from the ``imagehash`` library,
``hash_size=16``: the 16x16 lowest frequencies of a 64x64 grey thumbnail) of itself and of its
horizontal flip, vertical flip and 180-degree rotation; two images of different lesions are a
pair when the Hamming distance between one's hash and any of the other's four is at most
``threshold``. Resized and re-encoded copies keep their hash within a few bits. The common
64-bit pHash is useless here: dermoscopy images are mostly "a dark blob on light skin", and on
HAM10000 it put hundreds of pairs of plainly different lesions within 4 bits (docs/RESULTS.md).
:func:`lesion_groups` merges paired lesions (union-find) into split groups for
``data.group_near_duplicates=true``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Variants hashed per image: a copy flipped either way (or both) is still found.
VARIANTS = ("none", "hflip", "vflip", "rot180")
PAIR_COLUMNS = (
    "image_id_a",
    "lesion_id_a",
    "dx_a",
    "image_id_b",
    "lesion_id_b",
    "dx_b",
    "distance",
    "transform",
)
HASH_SIZE = 16  # pHash side: HASH_SIZE**2 bits per hash
HASH_WORDS = HASH_SIZE**2 // 64
DEFAULT_THRESHOLD = 24
_CHUNK = 64


def image_hashes(path: str | Path) -> np.ndarray:
    """pHash of the image at ``path`` and of its flips: uint64 (len(VARIANTS), HASH_WORDS)."""
    import imagehash

    with Image.open(path) as im:
        grey = im.convert("L")
    views = (grey, ImageOps.mirror(grey), ImageOps.flip(grey), grey.rotate(180))
    bits = [imagehash.phash(v, hash_size=HASH_SIZE).hash.flatten() for v in views]
    return np.stack([np.packbits(b).view(">u8").astype(np.uint64) for b in bits])


def _cache_file(paths: Sequence[str], cache_dir: str | Path) -> Path:
    """Cache file named by the images' paths, sizes and modification times."""
    h = hashlib.sha256(f"phash{HASH_SIZE}".encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Path(cache_dir) / "phash" / f"{h.hexdigest()[:24]}.npy"


def hash_images(
    paths: Sequence[str], cache_dir: str | Path | None = None, progress: bool = True
) -> np.ndarray:
    """(N, len(VARIANTS), HASH_WORDS) uint64 pHashes of ``paths`` (:func:`image_hashes`),
    cached under ``cache_dir``/phash when given (re-hashed when any file changes)."""
    from tqdm.auto import tqdm

    cache = _cache_file(paths, cache_dir) if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    out = np.empty((len(paths), len(VARIANTS), HASH_WORDS), dtype=np.uint64)
    for i, p in enumerate(tqdm(paths, desc="hashing images", disable=not progress or None)):
        out[i] = image_hashes(p)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, out)
        except OSError as e:  # read-only cache: the hashes are only recomputed next time
            log.warning("near-duplicate hash cache not written (%s)", e)
    return out


def find_pairs(
    frame: pd.DataFrame, hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD
) -> pd.DataFrame:
    """Pairs of images with *different* lesion ids within ``threshold`` bits (PAIR_COLUMNS),
    closest first. ``frame`` rows (image_id, lesion_id, dx) align with ``hashes`` rows."""
    lesions = frame["lesion_id"].to_numpy(dtype=str)
    rows = []
    for start in range(0, len(frame), _CHUNK):
        stop = min(start + _CHUNK, len(frame))
        # (rows, N, variants): image i's own hash against every variant of image j.
        xor = hashes[start:stop, None, None, 0, :] ^ hashes[None, :, :, :]
        bits = np.bitwise_count(xor).sum(axis=3, dtype=np.int32)
        best, variant = bits.min(axis=2), bits.argmin(axis=2)
        i_idx, j_idx = np.nonzero(best <= threshold)
        i_idx = i_idx + start
        keep = (j_idx > i_idx) & (lesions[i_idx] != lesions[j_idx])
        for i, j in zip(i_idx[keep], j_idx[keep], strict=True):
            rows.append((i, j, int(best[i - start, j]), VARIANTS[variant[i - start, j]]))
    ids, dx = frame["image_id"].to_numpy(dtype=str), frame["dx"].to_numpy(dtype=str)
    out = pd.DataFrame(
        [(ids[i], lesions[i], dx[i], ids[j], lesions[j], dx[j], d, t) for i, j, d, t in rows],
        columns=list(PAIR_COLUMNS),
    )
    return out.sort_values(["distance", "image_id_a", "image_id_b"], ignore_index=True)


def near_duplicate_pairs(
    frame: pd.DataFrame,
    threshold: int = DEFAULT_THRESHOLD,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Hash every image of ``frame`` (its ``path`` column) and return the cross-lesion pairs."""
    hashes = hash_images(list(frame["path"]), cache_dir, progress)
    return find_pairs(frame, hashes, threshold)


def lesion_groups(lesion_ids: Sequence[str], pairs: pd.DataFrame) -> dict[str, str]:
    """lesion id -> group id (the group's smallest lesion id): lesions joined by any pair
    (transitively: a union-find over lesion ids) share one group."""
    parent = {str(lesion): str(lesion) for lesion in lesion_ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in zip(
        pairs["lesion_id_a"].astype(str), pairs["lesion_id_b"].astype(str), strict=True
    ):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {lesion: find(lesion) for lesion in parent}


def format_pairs(pairs: pd.DataFrame, threshold: int, limit: int = 10) -> str:
    """Short text report: the pair count, lesions involved and the closest pairs."""
    lesions = len(set(pairs["lesion_id_a"]) | set(pairs["lesion_id_b"]))
    lines = [
        f"Near-duplicate images across lesion ids (pHash incl. flips, distance <= {threshold} "
        f"of {HASH_SIZE**2} bits): {len(pairs)} pair(s) involving {lesions} lesion(s)"
    ]
    if len(pairs):
        lines.append(pairs.head(limit).to_string(index=False))
        if len(pairs) > limit:
            lines.append(f"... {len(pairs) - limit} more")
    return "\n".join(lines)
