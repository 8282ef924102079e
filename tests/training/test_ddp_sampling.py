"""The DDP samplers: one global draw per epoch split over ranks, exact evaluation shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from derm_exp.data.sampling import (
    RankSliceSampler,
    ShardSampler,
    epoch_seed,
    make_weighted_sampler,
)
from derm_exp.train import ddp_rank_overrides

LABELS = np.array([0] * 40 + [1] * 12 + [2] * 5 + [3] * 3 + [4] * 21 + [5] * 2 + [6] * 18)


def _ranks(world: int, seed: int, epoch: int, weighted: bool) -> list[list[int]]:
    weights = make_weighted_sampler(LABELS, 7, power=0.5).weights if weighted else None
    out = []
    for r in range(world):
        s = RankSliceSampler(len(LABELS), r, world, torch.Generator(), weights)
        s.set_epoch(seed, epoch)
        out.append(list(s))
    return out


def _single_process_order(seed: int, epoch: int, weighted: bool) -> list[int]:
    """What one process's sampler yields for the epoch (the trainer's seeding)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if weighted:
        sampler = make_weighted_sampler(LABELS, 7, power=0.5)
        sampler.generator = gen
    else:
        sampler = RandomSampler(range(len(LABELS)), generator=gen)
    return list(sampler)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_slices_are_one_global_draw(weighted: bool, world: int) -> None:
    ranks = _ranks(world, seed=7, epoch=4, weighted=weighted)
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of steps
    interleaved = [i for step in zip(*ranks, strict=True) for i in step]
    full = _single_process_order(7, 4, weighted)
    usable = len(LABELS) // world * world
    assert interleaved == full[:usable]  # per step: consecutive items of one process's order
    positions = [set(range(r, usable, world)) for r in range(world)]  # disjoint slices
    assert set().union(*positions) == set(range(usable))


def test_weighted_draw_keeps_its_class_balance() -> None:
    drawn = [i for e in range(30) for r in _ranks(2, 1, e, weighted=True) for i in r]
    share = np.bincount(LABELS[drawn], minlength=7) / len(drawn)
    expected = np.bincount(LABELS, minlength=7) ** 0.5
    np.testing.assert_allclose(share, expected / expected.sum(), atol=0.03)


@pytest.mark.parametrize("weighted", [True, False])
def test_epochs_differ_and_a_seed_repeats(weighted: bool) -> None:
    assert _ranks(2, 3, 0, weighted) == _ranks(2, 3, 0, weighted)
    assert _ranks(2, 3, 0, weighted) != _ranks(2, 3, 1, weighted)
    assert _ranks(2, 3, 0, weighted) != _ranks(2, 4, 0, weighted)


@pytest.mark.parametrize(("n", "world"), [(19, 2), (20, 3), (2, 3), (0, 2)])
def test_eval_shards_cover_every_image_once_in_order(n: int, world: int) -> None:
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert sum(len(ShardSampler(n, r, world)) for r in range(world)) == n


def test_other_ranks_write_no_hydra_outputs() -> None:
    argv = ["experiment=demo", "hydra.run.dir=/x", "trainer.max_epochs=2"]
    assert ddp_rank_overrides(argv, rank=0, world_size=2) == argv
    assert ddp_rank_overrides(argv, rank=1, world_size=1) == argv
    other = ddp_rank_overrides(argv, rank=1, world_size=2)
    assert "hydra.run.dir=/x" not in other and "hydra.run.dir=." in other
    assert {"hydra.output_subdir=null", "hydra/job_logging=stdout"} <= set(other)
    assert {"experiment=demo", "trainer.max_epochs=2"} <= set(other)
