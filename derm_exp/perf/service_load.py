"""Service benchmark: requests/s and latency of ``derm_exp.serve`` under concurrent clients.

Research and education only; not a medical device.

``python -m derm_exp.perf.service_load model=<ref> [clients=1,8,32] [requests=160] ...``
starts a real ``python -m derm_exp.serve`` process on a free loopback port for each batching
setting (micro-batching on, and off: one request per forward), warms both up, then sends
``requests`` uploads of one image from ``c`` concurrent clients (a bounded load generator:
``c`` workers, one request each at a time, over ``c`` keep-alive connections) to one server,
then the other, for each client count, ``rounds`` times (interleaved, so a change in the
machine's load hits both alike). It reports the median requests/s over the rounds, p50/p95
latency over all of them and the mean batch size the server formed (from ``/health``). With
``explain=true`` it also times Grad-CAM in-process (median ms per image). The client shares the
machine with the server: on a small CPU machine it takes part of the cores the model could use.
Writes the figures as JSON (``output=...``) and prints a table.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

USAGE = """\
usage: python -m derm_exp.perf.service_load model=<checkpoint | run id | models:/…> [key=value …]

  clients=1,8,32       concurrent clients to measure (comma separated)
  requests=160         timed requests per client count and round (at least 4 per client)
  rounds=3             interleaved rounds (median requests/s reported)
  warmup=16            untimed requests before each server's measurements
  modes=on,off         micro-batching settings to compare (on: batching.enabled=true)
  image=<file>         the image to upload (default: a generated 200x150 demo image)
  tta=none             TTA mode of every request
  explain=false        also time Grad-CAM per image (in-process)
  device=auto          the server's device (auto | cpu | cuda)
  threads=             the server's torch threads (default: torch's, one per core)
  max_batch=16 max_wait_ms=10   the server's batching settings
  tracking.uri=...     where run ids / models:/ URIs are looked up
  output=<file.json>   write the figures there
"""
DEFAULTS = {
    "model": None,
    "clients": "1,8,32",
    "requests": "160",
    "warmup": "16",
    "rounds": "3",
    "modes": "on,off",
    "image": None,
    "tta": "none",
    "explain": "false",
    "device": "auto",
    "threads": None,
    "max_batch": "16",
    "max_wait_ms": "10",
    "tracking.uri": None,
    "output": None,
}


class LoadError(ValueError):
    """A bad command line (shown as one ``error:`` line)."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments (the project's CLI style) over :data:`DEFAULTS`."""
    values: dict[str, Any] = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise LoadError(f"unknown argument {arg!r} (see --help)")
        values[key] = value
    if not values["model"]:
        raise LoadError("no model given: pass model=<checkpoint | run id | models:/...>")
    try:
        values["clients"] = [int(c) for c in str(values["clients"]).split(",")]
        for key in ("requests", "warmup", "rounds", "max_batch"):
            values[key] = int(values[key])
        values["max_wait_ms"] = float(values["max_wait_ms"])
    except ValueError as exc:
        raise LoadError(f"not a number: {exc}") from None
    values["modes"] = [m.strip() for m in str(values["modes"]).split(",")]
    if not set(values["modes"]) <= {"on", "off"} or min(values["clients"]) < 1:
        raise LoadError("modes= takes on and/or off; clients= positive integers")
    if values["rounds"] < 1:
        raise LoadError("rounds= must be >= 1")
    values["explain"] = str(values["explain"]).lower() in ("1", "true", "yes")
    return values


@dataclass
class Run:
    """One client count against one server in one round: latencies (s) and the wall time."""

    clients: int
    latencies: list[float]
    wall_s: float
    errors: int
    batches: int
    requests_served: int


def figures(runs: list[Run]) -> dict[str, Any]:
    """The rounds of one (mode, client count): median requests/s, pooled latency percentiles."""
    lat = np.asarray([t for r in runs for t in r.latencies]) * 1000
    batches = sum(r.batches for r in runs)
    return {
        "clients": runs[0].clients,
        "rounds": len(runs),
        "requests": len(lat),
        "errors": sum(r.errors for r in runs),
        "requests_per_s": statistics.median(len(r.latencies) / r.wall_s for r in runs),
        "requests_per_s_rounds": [len(r.latencies) / r.wall_s for r in runs],
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "mean_batch": sum(r.requests_served for r in runs) / batches if batches else None,
    }


async def _load(url: str, image: bytes, clients: int, n: int, tta: str) -> tuple[list, float, int]:
    """``n`` uploads from ``clients`` concurrent workers; (latencies, wall seconds, errors).

    aiohttp, not httpx: the generator shares the server's cores, and per upload it took 1.1–1.6
    ms of CPU against httpx's 4.9–5.5 ms (measured here against one server, 96 uploads)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal errors
            for _ in todo:
                form = aiohttp.FormData()
                form.add_field("image", image, filename="image.jpg", content_type="image/jpeg")
                form.add_field("tta", tta)
                started = time.perf_counter()
                async with session.post("/predict", data=form) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, time.perf_counter() - started, errors


def _health(url: str, timeout: float) -> dict[str, Any]:
    """``GET /health`` (stdlib: httpx is only a test dependency)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
        return json.loads(response.read())


def _stats(url: str) -> tuple[int, int]:
    batching = _health(url, 30)["batching"]
    return int(batching["batches"]), int(batching["requests"])


def measure_once(url: str, image: bytes, clients: int, opts: dict[str, Any]) -> Run:
    """One timed load of ``max(requests, 4 * clients)`` uploads against ``url``."""
    n = max(opts["requests"], 4 * clients)
    before = _stats(url)
    latencies, wall, errors = asyncio.run(_load(url, image, clients, n, opts["tta"]))
    after = _stats(url)
    return Run(clients, latencies, wall, errors, after[0] - before[0], after[1] - before[1])


def measure(urls: dict[str, str], image: bytes, opts: dict[str, Any]) -> dict[str, list]:
    """Warm every server up, then the interleaved rounds: {mode: [figures per client count]}."""
    for url in urls.values():
        asyncio.run(_load(url, image, max(opts["clients"]), opts["warmup"], opts["tta"]))
    runs: dict[tuple[str, int], list[Run]] = {}
    for round_ in range(opts["rounds"]):
        for clients in opts["clients"]:
            for mode, url in urls.items():
                run_ = measure_once(url, image, clients, opts)
                runs.setdefault((mode, clients), []).append(run_)
                rate = len(run_.latencies) / run_.wall_s
                print(
                    f"  round {round_ + 1}, {clients:>3} clients, batching {mode}: "
                    f"{rate:.1f} req/s",
                    flush=True,
                )
    return {mode: [figures(runs[mode, c]) for c in opts["clients"]] for mode in urls}


def server_args(opts: dict[str, Any], mode: str) -> list[str]:
    args = [
        f"model={opts['model']}",
        f"device={opts['device']}",
        f"batching.enabled={'true' if mode == 'on' else 'false'}",
        f"batching.max_batch={opts['max_batch']}",
        f"batching.max_wait_ms={opts['max_wait_ms']}",
        "batching.queue_size=256",
        "log_level=warning",
    ]
    if opts["threads"]:
        args.append(f"threads={int(opts['threads'])}")
    if opts["tracking.uri"]:
        args.append(f"tracking.uri={opts['tracking.uri']}")
    return args


def default_image(workdir: Path) -> Path:
    """One generated demo image (200x150, like the demo dataset's)."""
    from derm_exp.data.synthetic import generate_demo_dataset

    root = generate_demo_dataset(workdir / "demo", n_images=60, seed=11)
    return sorted((root / "images").glob("*.jpg"))[0]


def gradcam_ms(opts: dict[str, Any], image: Path, repeats: int = 10) -> dict[str, Any]:
    """Median milliseconds of one Grad-CAM map (one image, after 2 untimed calls)."""
    import torch

    from derm_exp.explanations import explain_image
    from derm_exp.inference.prediction_model import load_prediction_model

    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))  # as the server runs
    loaded = load_prediction_model(
        [opts["model"]], tracking_uri=opts["tracking.uri"], device=opts["device"]
    )
    predictor = loaded.model.predictors[0] if loaded.is_ensemble else loaded.model
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        explain_image(predictor, image, method="gradcam")
        if i >= 2:
            times.append(time.perf_counter() - started)
    return {"method": "gradcam", "median_ms": 1000 * statistics.median(times), "repeats": repeats}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: list[str], log: Path, startup_s: float = 300.0) -> tuple[Any, str]:
    """``python -m derm_exp.serve <args>`` on a free port, once ``/health`` answers."""
    import subprocess

    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "derm_exp.serve", *args, f"port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadError(f"derm_exp.serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            _health(url, 2)
            return proc, url
        except (OSError, ValueError):  # URLError/HTTPError/refused are OSErrors
            time.sleep(0.5)
    stop_server(proc)
    raise LoadError(f"derm_exp.serve did not start in {startup_s:.0f} s (log: {log})")


def stop_server(proc: Any) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(opts: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Every batching mode x client count; Grad-CAM cost when asked."""
    from derm_exp.perf.timing import environment
    from derm_exp.runtime import resolve_device

    image = Path(opts["image"]) if opts["image"] else default_image(workdir)
    data = image.read_bytes()
    result: dict[str, Any] = {
        "environment": environment(resolve_device(opts["device"])),
        "settings": {k: v for k, v in opts.items() if k != "output"} | {"image": str(image)},
        "batching": {},
    }
    servers = {}
    try:
        for mode in opts["modes"]:
            servers[mode] = start_server(server_args(opts, mode), workdir / f"serve_{mode}.log")
        result["batching"] = measure({m: url for m, (_, url) in servers.items()}, data, opts)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    if {"on", "off"} <= set(result["batching"]):
        off = {r["clients"]: r["requests_per_s"] for r in result["batching"]["off"]}
        result["speedup"] = {
            r["clients"]: r["requests_per_s"] / off[r["clients"]] for r in result["batching"]["on"]
        }
    if opts["explain"]:
        result["gradcam"] = gradcam_ms(opts, image)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'batching':<9} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'batch':>6} {'errors':>6}"
    ]
    for mode, runs in result["batching"].items():
        for r in runs:
            batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "-"
            lines.append(
                f"{mode:<9} {r['clients']:>7} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} "
                f"{r['p95_ms']:>8.1f} {batch:>6} {r['errors']:>6}"
            )
    for clients, ratio in (result.get("speedup") or {}).items():
        lines.append(f"micro-batching speed-up at {clients} clients: {ratio:.2f}x")
    if "gradcam" in result:
        lines.append(f"Grad-CAM: {result['gradcam']['median_ms']:.1f} ms per image (median)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import tempfile

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[1].strip() + "\n\n" + USAGE)
        return 0
    try:
        opts = parse_args(argv)
        with tempfile.TemporaryDirectory(prefix="service_load-") as tmp:
            result = run(opts, Path(tmp))
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if opts["output"]:
        Path(opts["output"]).write_text(json.dumps(result, indent=2, default=str))
        print(f"figures: {opts['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
