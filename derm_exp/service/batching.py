"""Micro-batching: concurrent requests share one forward pass.

Research and education only; not a medical device.

Requests wait in a bounded :class:`asyncio.Queue`; one collector task takes the first waiting
request, then whatever else is queued and, while other uploads are still being received and
decoded (:meth:`MicroBatcher.arriving`), whatever arrives within ``max_wait_ms`` (up to
``max_batch`` images): a lone request does not wait for company that is not coming. It
hands the batch to a single worker thread that runs the model (one forward per TTA mode in the
batch), so the event loop keeps accepting uploads meanwhile. While a batch runs, new requests
queue up and form the next batch. ``enabled=False`` runs every request alone (``max_batch=1``,
no wait): one request per forward, the baseline of the service benchmark. A full queue is
refused at once (:class:`QueueFull` -> HTTP 503); a request not answered within its timeout
gets :class:`TimeoutError` (HTTP 504) and its slot is dropped from the batch if not yet run.

Hand-written on asyncio because the model needs a thread of its own and a batch must cut
across requests: neither FastAPI nor uvicorn batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
# predict(images, tta) -> one result per image, in order.
PredictFn = Callable[[Sequence[Any], str], list[dict[str, Any]]]


class QueueFull(RuntimeError):
    """More requests are waiting than the queue holds (HTTP 503: try again later)."""


@dataclass(frozen=True)
class BatchSettings:
    """``batching`` in conf/serve.yaml."""

    enabled: bool = True
    max_batch: int = 16
    max_wait_ms: float = 10.0
    queue_size: int = 64

    @classmethod
    def from_config(cls, cfg: Any) -> BatchSettings:
        return cls(
            enabled=bool(cfg.enabled),
            max_batch=int(cfg.max_batch),
            max_wait_ms=float(cfg.max_wait_ms),
            queue_size=int(cfg.queue_size),
        )


@dataclass
class _Job:
    image: Any
    tta: str
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """Counters shown by ``GET /health``."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Arrival:
    """One request on its way to :meth:`MicroBatcher.submit` (counted until closed)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher: MicroBatcher | None = batcher
        batcher._arriving += 1

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher._arriving -= 1
            self._batcher = None


class MicroBatcher:
    """Collects requests into batches and runs ``predict`` on them in one worker thread."""

    def __init__(self, predict: PredictFn, settings: BatchSettings) -> None:
        if settings.max_batch < 1 or settings.queue_size < 1 or settings.max_wait_ms < 0:
            raise ValueError(f"invalid batching settings: {settings}")
        self.predict = predict
        self.settings = settings
        self.max_batch = settings.max_batch if settings.enabled else 1
        self.max_wait = settings.max_wait_ms / 1000.0 if settings.enabled else 0.0
        self.stats = BatchStats()
        # One thread: the model is used by one batch at a time (explanations too, see run()).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="derm-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._arriving = 0

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Around a request that may submit an image (from before its body is read): while it
        is open, the collector waits (up to ``max_wait_ms``) for it to join the batch being
        formed. :meth:`submit` with this arrival closes it, as does leaving the block."""
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.close()

    # -- life cycle (FastAPI lifespan) --------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(self.settings.queue_size)
        self._task = asyncio.create_task(self._collect(), name="derm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- requests -----------------------------------------------------------------------------
    async def submit(
        self, image: Any, tta: str, timeout: float, arrival: Arrival | None = None
    ) -> dict[str, Any]:
        """The prediction for one image; :class:`QueueFull` or :class:`TimeoutError`."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if arrival is not None:
            arrival.close()
        job = _Job(image, tta, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise QueueFull(
                f"the server is busy ({self.settings.queue_size} requests waiting); "
                "try again shortly"
            ) from None
        # shield: a job that times out inside a running batch must not cancel that batch; a
        # job still waiting is cancelled, and the collector leaves it out.
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            job.future.cancel()
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread (e.g. an explanation), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- the collector ------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._next_batch(self._queue)
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - already given to the requests; keep serving
                log.exception("batch of %d failed", len(batch))

    async def _next_batch(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        """The first waiting job, then more until ``max_batch`` or ``max_wait`` has passed."""
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0 or not self._arriving:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        """One ``predict`` call (one forward) per TTA mode among the live jobs of ``batch``."""
        live = [job for job in batch if not job.future.done()]
        groups: dict[str, list[_Job]] = {}
        for job in live:
            groups.setdefault(job.tta, []).append(job)
        for tta, jobs in groups.items():
            self.stats.batches += 1
            self.stats.requests += len(jobs)
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
            try:
                results = await self.run(self.predict, [j.image for j in jobs], tta)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
