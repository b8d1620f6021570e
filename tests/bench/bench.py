"""Benchmark: where backfill sits against its two bounds, the API budget and the bytes.

    python tests/bench/bench.py            # about 3 minutes on 2 cores
    python tests/bench/bench.py --full     # the issue's sizes: 2 GiB, 256 MiB parts, a week

Every figure is measured in one run against the bundled emulator (faults off) on
loopback, and throughput is a ratio to a plain aiohttp download of the very same
links with the same concurrency, so a shared, noisy machine skews both alike.
Not a test: it prints figures and checks nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio

from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, serve
from backfill.keys import Granularity, expand, key_at
from backfill.store import Store

MiB = 1024 * 1024


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    code: int


def cli(args: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run the CLI; wall time and peak RSS of that one child (os.wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "backfill", *args], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return Measured(time.perf_counter() - started, usage.ru_maxrss / 1024,
                    os.waitstatus_to_exitcode(status))


def env_for(url: str) -> dict[str, str]:
    c = DEMO_CREDENTIALS
    return {**os.environ, "GIO_BASE_URL": url, "GIO_CLIENT_ID": c.client_id,
            "GIO_SECRET": c.secret, "GIO_PROJECT_UID": c.project_uid, "GIO_AI": c.ai}


async def reference(url: str, key: str, data_type: str, folder: Path, concurrency: int) -> float:
    """A plain download of the same links: aiohttp, same concurrency, no checks."""
    c = DEMO_CREDENTIALS
    from backfill.auth import token_request_body

    async with aiohttp.ClientSession() as session:
        body = token_request_body(c.secret, c.project_uid, c.ai, int(time.time() * 1000))
        async with session.post(f"{url}/auth/token", data=body,
                                headers={"X-Client-Id": c.client_id}) as r:
            token = (await r.json())["code"]
        headers = {"X-Client-Id": c.client_id, "Authorization": f"Token {token}"}
        async with session.get(f"{url}/v2/insights/hour/{data_type}/{c.ai}/{key}.json",
                               params={"expire": "60"}, headers=headers) as r:
            links = (await r.json())["downloadLinks"]
        limit = anyio.Semaphore(concurrency)
        started = time.perf_counter()

        async def one(i: int, link: str) -> None:
            async with limit, session.get(link) as resp:
                with (folder / f"{i}.gz").open("wb") as f:
                    async for chunk in resp.content.iter_chunked(MiB):
                        f.write(chunk)

        async with anyio.create_task_group() as group:
            for i, link in enumerate(links):
                group.start_soon(one, i, link)
        return time.perf_counter() - started


async def throughput(label: str, part_mb: float, parts: int, work: Path) -> dict[str, float]:
    """One hour of one type, split into ``parts`` parts: backfill vs the reference."""
    part_size = int(part_mb * MiB)
    config = EmulatorConfig(data_dir=work / "emulator", job_seconds=0.0, flat_data=True,
                            compress_level=0, bytes_per_hour=part_size * parts - 1024,
                            part_size=part_size)
    hour = key_at(datetime.now(UTC) - timedelta(hours=30), Granularity.HOUR)
    async with serve(config) as emulator:
        await anyio.to_thread.run_sync(lambda: emulator.state.data.parts(
            DEMO_CREDENTIALS.ai, "action", hour))  # generate before timing
        run_dir = work / f"run-{label}"
        run_dir.mkdir()
        args = ["run", "--from", hour.name, "--to", hour.name, "--granularity", "hour",
                "--types", "action", "--quiet", "--out", "out"]
        measured = await anyio.to_thread.run_sync(cli, args, env_for(emulator.url), run_dir)
        size = sum(p.stat().st_size for p in (run_dir / "out").rglob("part-*.csv.gz"))
        ref_dir = work / f"ref-{label}"
        ref_dir.mkdir()
        ref_seconds = await reference(emulator.url, hour.export_date, "action", ref_dir, 8)
    mbps = size / MiB / measured.seconds
    ref_mbps = size / MiB / ref_seconds
    return {"mb": size / MiB, "mbps": mbps, "ref_mbps": ref_mbps, "ratio": mbps / ref_mbps,
            "rss": measured.peak_rss_mb, "code": measured.code}


async def api_efficiency(days: int, work: Path) -> dict[str, float]:
    """Hourly keys with jobs that run a while: calls made / the minimum, and 429s."""
    config = EmulatorConfig(data_dir=work / "emulator", job_seconds=20.0, bytes_per_hour=8192,
                            part_size=MiB)
    async with serve(config) as emulator:
        run_dir = work / "run-api"
        run_dir.mkdir()
        (run_dir / "backfill.toml").write_text('poll_interval = "10s"\n')
        first = key_at(datetime.now(UTC) - timedelta(days=days + 2), Granularity.HOUR)
        last = key_at(first.start + timedelta(days=days) - timedelta(hours=1), Granularity.HOUR)
        keys = expand(first, last)
        args = ["run", "--from", first.name, "--to", last.name, "--granularity", "hour",
                "--types", "visit", "--quiet", "--out", "out"]
        measured = await anyio.to_thread.run_sync(cli, args, env_for(emulator.url), run_dir)
        stats = emulator.state.stats()
        rerun = await anyio.to_thread.run_sync(cli, args, env_for(emulator.url), run_dir)
    return {"keys": len(keys), "calls": stats["export_calls"], "min": len(keys),
            "ratio": stats["export_calls"] / len(keys), "429": stats["rate_limited"],
            "seconds": measured.seconds, "bound": len(keys) / 2.0,
            "rerun_calls": emulator.state.stats()["export_calls"] - stats["export_calls"],
            "rerun_seconds": rerun.seconds, "code": measured.code}


def noop_year(work: Path) -> Measured:
    """A finished one-year hourly range, run again: planning only, no call at all."""
    out = work / "year" / "out"
    Store(out).close()  # the schema
    last = key_at(datetime.now(UTC) - timedelta(days=2), Granularity.HOUR)
    keys = expand(key_at(last.start - timedelta(hours=8759), Granularity.HOUR), last)
    with sqlite3.connect(out / ".backfill" / "state.sqlite") as db:
        db.executemany("INSERT INTO units (api, key, data_type, status, updated_at) VALUES "
                       "('v2', ?, 'visit', 'done', '')", [(k.name,) for k in keys])
    args = ["run", "--from", keys[0].name, "--to", keys[-1].name, "--granularity", "hour",
            "--types", "visit", "--quiet", "--out", "out"]
    # No emulator at all: a call would fail, and the exit code would say so.
    return cli(args, env_for("http://127.0.0.1:9"), out.parent)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's full sizes")
    full = parser.parse_args().full
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as folder:
        work = Path(folder)
        large = await throughput("large", 32, 64 if full else 16, work)
        huge = await throughput("huge", 256, 2 if full else 1, work)
        small = await throughput("small", 1 / 16, 4000 if full else 1000, work)
        api = await api_efficiency(7 if full else 1, work)
        year = noop_year(work)
        help_seconds = cli(["--help"], dict(os.environ), work).seconds

    print(f"\nbackfill benchmark — {platform.node()}: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}")
    print("| measure | figure | target |")
    print("|---|---|---|")
    print(f"| API calls / minimum ({api['keys']} hourly keys, jobs RUNNING 20 s) | "
          f"{api['calls']} / {api['min']} = {api['ratio']:.2f} | ≤ 1.05 + RUNNING re-polls |")
    print(f"| 429 received | {api['429']} | 0 |")
    print(f"| wall time / lower bound (calls at 2/s) | {api['seconds']:.0f} s / "
          f"{api['bound']:.0f} s = {api['seconds'] / api['bound']:.2f} | ≤ 1.1 |")
    for name, r, target in (("large parts (32 MiB)", large, "≥ 0.9"),
                            ("small parts (64 KiB)", small, "≥ 0.8")):
        print(f"| throughput, {name}, {r['mb']:.0f} MiB | {r['mbps']:.0f} MiB/s vs reference "
              f"{r['ref_mbps']:.0f} MiB/s = {r['ratio']:.2f} | {target} |")
    print(f"| peak RSS, 32 MiB parts | {large['rss']:.0f} MB | ≤ 150 MB |")
    print(f"| peak RSS, 256 MiB parts | {huge['rss']:.0f} MB | ≤ 150 MB |")
    print(f"| no-op rerun, 8,760 hourly keys | {year.seconds:.2f} s, {year.peak_rss_mb:.0f} MB "
          f"(exit {year.code}) | < 2 s |")
    print(f"| no-op rerun after the API run | {api['rerun_calls']} calls, "
          f"{api['rerun_seconds']:.2f} s | 0 calls |")
    print(f"| `backfill --help` | {help_seconds:.2f} s | < 0.5 s |")


if __name__ == "__main__":
    anyio.run(main)
