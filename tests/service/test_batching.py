"""Micro-batching: concurrent requests share forwards, each still gets its own answer; a full
queue is 503, a slow model 504."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from derm_exp.service.app import ServiceSettings, create_app
from derm_exp.service.batching import BatchSettings, MicroBatcher, QueueFull
from derm_exp.service.limits import Limits


def _echo(calls: list[int]):
    def predict(images, tta):
        calls.append(len(images))
        return [{"value": x, "tta": tta} for x in images]

    return predict


async def _submit_all(batcher: MicroBatcher, items: list, tta: str = "none") -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(x, tta, timeout=30) for x in items))
    finally:
        await batcher.stop()


def test_concurrent_submissions_share_batches_and_keep_their_own_answer() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_echo(calls), BatchSettings(max_batch=8, max_wait_ms=50))
    results = asyncio.run(_submit_all(batcher, list(range(20))))
    assert [r["value"] for r in results] == list(range(20))
    assert sum(calls) == 20 and len(calls) < 20 and max(calls) <= 8
    assert batcher.stats.requests == 20 and batcher.stats.batches == len(calls)


def test_the_collector_waits_only_for_requests_on_their_way() -> None:
    """A request being received (an open arrival) joins the batch; with none on its way a lone
    request is run at once even under a long max_wait."""
    calls: list[int] = []
    batcher = MicroBatcher(_echo(calls), BatchSettings(max_batch=8, max_wait_ms=5000))

    async def run() -> None:
        await batcher.start()
        try:
            with batcher.arriving() as second:
                first = asyncio.create_task(batcher.submit(1, "none", 30))
                await asyncio.sleep(0.05)  # the collector holds 1, waiting for the arrival
                assert calls == []
                assert (await batcher.submit(2, "none", 30, second))["value"] == 2
            assert (await first)["value"] == 1
            assert calls == [2]
            alone = asyncio.create_task(batcher.submit(3, "none", 30))
            await asyncio.sleep(0.05)
            assert calls == [2, 1]  # not kept waiting for 5 s
            await alone
        finally:
            await batcher.stop()

    asyncio.run(run())


def test_disabled_batching_runs_one_request_per_call() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_echo(calls), BatchSettings(enabled=False))
    results = asyncio.run(_submit_all(batcher, list(range(6))))
    assert [r["value"] for r in results] == list(range(6))
    assert calls == [1] * 6


def test_requests_with_different_tta_go_to_different_forwards() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_echo(calls), BatchSettings(max_batch=16, max_wait_ms=50))

    async def run() -> list:
        await batcher.start()
        try:
            jobs = [batcher.submit(i, "light" if i % 2 else "none", 30) for i in range(6)]
            return await asyncio.gather(*jobs)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert [r["tta"] for r in results] == ["none", "light"] * 3
    assert sorted(calls) == [3, 3]


def test_a_full_queue_is_refused_and_a_slow_model_times_out() -> None:
    release = threading.Event()

    def slow(images, tta):
        release.wait(10)
        return [{"value": x} for x in images]

    batcher = MicroBatcher(slow, BatchSettings(max_batch=1, max_wait_ms=0, queue_size=1))

    async def run() -> None:
        await batcher.start()
        try:
            blocker = asyncio.create_task(batcher.submit(0, "none", 30))
            await asyncio.sleep(0.1)  # the collector took it: the model thread is busy
            waiting = asyncio.create_task(batcher.submit(1, "none", 0.2))  # the queue's one slot
            await asyncio.sleep(0)
            with pytest.raises(QueueFull):
                await batcher.submit(2, "none", 30)
            with pytest.raises(TimeoutError):
                await waiting
            assert batcher.stats.rejected == 1
        finally:
            release.set()
            assert (await blocker)["value"] == 0
            await batcher.stop()

    asyncio.run(run())


# -- through the app, with the real model -----------------------------------------------------


def _count_forwards(loaded) -> tuple[list[int], object]:
    """A forward hook on the network: the batch size of every forward it runs."""
    sizes: list[int] = []
    handle = loaded.model.model.register_forward_hook(
        lambda module, args, out: sizes.append(int(args[0].shape[0]))
    )
    return sizes, handle


async def _post_concurrently(app, files: list[Path], **form) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        jobs = [
            client.post(
                "/predict", files={"image": (f.name, f.read_bytes(), "image/jpeg")}, data=form
            )
            for f in files
        ]
        return await asyncio.gather(*jobs)


@pytest.mark.parametrize("enabled", [True, False])
def test_concurrent_requests_are_answered_correctly_in_fewer_forwards(
    loaded, images: list[Path], enabled: bool
) -> None:
    files = images[:12]
    expected = [loaded.model.predict(f) for f in files]  # one at a time, before counting
    settings = ServiceSettings(
        batching=BatchSettings(enabled=enabled, max_batch=16, max_wait_ms=100), limits=Limits()
    )
    app = create_app(loaded, settings)
    sizes, handle = _count_forwards(loaded)
    try:
        responses = asyncio.run(_post_concurrently(app, files))
    finally:
        handle.remove()
    assert [r.status_code for r in responses] == [200] * len(files)
    for response, want in zip(responses, expected, strict=True):
        got = response.json()
        assert got["predicted_class"] == want["predicted_class"]
        np.testing.assert_allclose(
            [got["probabilities"][c] for c in loaded.model.classes],
            [want["probabilities"][c] for c in loaded.model.classes],
            atol=1e-5,
        )
    assert sum(sizes) == len(files)
    if enabled:
        assert len(sizes) < len(files)
    else:
        assert sizes == [1] * len(files)
