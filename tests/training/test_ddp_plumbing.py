"""derm_exp.training.distributed on two gloo processes: decisions, gathers, weight sync."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from derm_exp.data.sampling import ShardSampler
from derm_exp.training import distributed


def _worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        out: dict = {"rank": distributed.rank(), "main": distributed.is_main()}
        # A decision taken on rank 0 reaches rank 1 (what ends training on every rank).
        out["decision"] = distributed.broadcast("time_budget" if rank == 0 else None)
        # A NaN loss on rank 1 alone stops both ranks.
        out["all_ok"] = distributed.all_ok(rank == 0)
        out["mean"] = distributed.mean_over_ranks({"loss": float(rank)})["loss"]
        # Contiguous shards of 7 images gather back to every image once, in order.
        idx = np.array(list(ShardSampler(7, rank, 2)))
        (gathered,) = distributed.gather_shards(idx * 10)
        out["gathered"] = gathered.tolist()
        # Rank 0's weights and BatchNorm statistics everywhere.
        net = torch.nn.BatchNorm1d(3)
        with torch.no_grad():
            net.running_mean.fill_(float(rank + 1))
            net.weight.fill_(float(rank + 5))
        distributed.sync_from_main(net)
        out["synced"] = [net.running_mean.tolist(), net.weight.tolist()]
        saved = distributed.broadcast_saved({"w": torch.full((2,), 3.0)} if rank == 0 else None)
        out["saved"] = saved["w"].tolist()
        # A failed gloo collective is a peer failure; other errors stay what they are.
        gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error")
        out["peer"] = [
            str(distributed.as_peer_failure(gloo)),
            distributed.as_peer_failure(RuntimeError("mat1 and mat2 shapes differ")),
            distributed.as_peer_failure(ValueError("gloo/")),
        ]
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        distributed.teardown()


def test_helpers_agree_on_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["main"] for r in results] == [True, False]
    for r in results:
        assert r["decision"] == "time_budget"
        assert r["all_ok"] is False
        assert r["mean"] == 0.5
        assert r["gathered"] == [0, 10, 20, 30, 40, 50, 60]
        assert r["synced"] == [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]
        assert r["saved"] == [3.0, 3.0]
        assert r["peer"][0].startswith("another DDP process failed or stopped answering ([")
        assert r["peer"][1:] == [None, None]


def test_single_process_helpers_are_no_ops() -> None:
    assert not distributed.is_distributed()
    assert distributed.is_main() and distributed.world_size() == 1
    assert distributed.broadcast("x") == "x" and distributed.all_ok(False) is False
    a = np.arange(3)
    assert distributed.gather_shards(a)[0] is a
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(net, torch.device("cpu")) is net
    assert distributed.unwrap(net) is net
    assert distributed.as_peer_failure(RuntimeError("gloo/ Read error")) is None  # no group
