"""Benchmark rows for an object-store output: the S3 server (moto) in a process of its
own, counting the requests it serves, against backfill writing to it and to local disk.

    python tests/bench/store_bench.py      # alone (about 2 minutes), or from bench.py

Figures, in one run: throughput to the store beside the same run to local disk and
beside the store's own ceiling (a plain obstore upload loop of the same bytes, same
concurrency); peak RSS at --downloads 16 with 64 MiB parts; LIST calls for a month of
hourly keys on a fresh runner, then with the cache warm; requests per fetched unit.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Measured, MiB, backfill_cli, emulator, env_for

S3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
      "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
      "AWS_EC2_METADATA_DISABLED": "true"}
_REQUEST = re.compile(r'"(\w+) (\S+) HTTP')


def _serve_s3(conn: Connection) -> None:
    """moto's S3 on loopback; answers "counts" (requests by kind since the last "reset")."""
    from moto.server import ThreadedMotoServer

    counts: collections.Counter[str] = collections.Counter()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _REQUEST.search(record.getMessage())
            if match:
                method, target = match[1], match[2]
                kind = "LIST" if method == "GET" and "list-type" in target else method
                counts[kind] += 1

    log = logging.getLogger("werkzeug")
    log.setLevel(logging.INFO)
    log.addHandler(Count())
    log.propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
    server.start()
    host, port = server.get_host_and_port()
    conn.send(f"http://{host}:{port}")
    while (command := conn.recv()) != "stop":
        if command == "counts":
            conn.send(dict(counts))
        elif command == "reset":
            counts.clear()
            conn.send(None)


@contextmanager
def s3_server() -> Iterator[tuple[str, Connection]]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve_s3, args=(theirs,), daemon=True)
    process.start()
    try:
        yield ours.recv(), ours
    finally:
        process.kill()
        process.join()


def _ask(conn: Connection, command: str) -> Any:
    conn.send(command)
    return conn.recv()


def _bucket(endpoint: str, name: str) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=name)
    return client


def _upload_loop(conn: Connection, endpoint: str, bucket: str, sizes: list[int],
                 concurrency: int) -> None:
    """The store's ceiling: the same number of objects of the same sizes, uploaded from
    memory by obstore with backfill's settings, ``concurrency`` at a time."""
    import anyio
    import obstore
    from obstore.store import S3Store

    from backfill.destination.object_store import UPLOAD_CHUNK, UPLOAD_CONCURRENCY

    store = S3Store(bucket, prefix="ceiling", client_options={"allow_http": True}, config={
        "endpoint": endpoint, "access_key_id": S3["AWS_ACCESS_KEY_ID"],
        "secret_access_key": S3["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1"})
    block = os.urandom(MiB)

    async def main() -> float:
        limit = anyio.Semaphore(concurrency)

        async def one(i: int, size: int) -> None:
            async def blocks() -> Any:
                for _ in range(size // MiB):
                    yield block
                yield block[: size % MiB]

            async with limit:
                await obstore.put_async(store, f"o{i}", blocks(), chunk_size=UPLOAD_CHUNK,
                                        max_concurrency=UPLOAD_CONCURRENCY)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for i, size in enumerate(sizes):
                group.start_soon(one, i, size)
        return time.perf_counter() - started

    conn.send(anyio.run(main))


def upload_ceiling(endpoint: str, bucket: str, sizes: list[int], concurrency: int) -> float:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_upload_loop,
                              args=(theirs, endpoint, bucket, sizes, concurrency))
    process.start()
    seconds: float = ours.recv()
    process.join()
    return seconds


def throughput_to_store(work: Path, endpoint: str, conn: Connection, *, part_mb: int,
                        parts: int, downloads: int) -> dict[str, Any]:
    """One hour of one type in ``parts`` parts, to local disk and to the store."""
    from backfill.keys import Granularity, key_at

    part_size = part_mb * MiB
    hour = key_at(datetime.now(UTC) - timedelta(hours=30), Granularity.HOUR)
    _bucket(endpoint, "bench-big")
    with emulator(("action", hour.name), data_dir=work / "emulator-store",
                  job_seconds=0.0, flat_data=True, compress_level=0,
                  bytes_per_hour=part_size * parts - 1024, part_size=part_size) as url:
        env = {**env_for(url), **S3, "AWS_ENDPOINT_URL": endpoint,
               "XDG_STATE_HOME": str(work / "state")}
        args = ["run", "--from", hour.name, "--to", hour.name, "--granularity", "hour",
                "--types", "action", "--quiet", "--downloads", str(downloads)]
        run_dir = work / "run-store"
        run_dir.mkdir()
        local = backfill_cli([*args, "--out", "out"], env, run_dir)
        sizes = [p.stat().st_size for p in (run_dir / "out").rglob("part-*.csv.gz")]
        shutil.rmtree(run_dir)
        run_dir.mkdir()
        _ask(conn, "reset")
        remote = backfill_cli([*args, "--out", "s3://bench-big/raw"], env, run_dir)
        requests = _ask(conn, "counts")
    ceiling = upload_ceiling(endpoint, "bench-big", sizes, downloads)
    mib = sum(sizes) / MiB
    return {"mib": mib, "parts": len(sizes), "downloads": downloads,
            "local": local, "remote": remote, "ceiling_seconds": ceiling,
            "local_mbps": mib / local.seconds, "remote_mbps": mib / remote.seconds,
            "ceiling_mbps": mib / ceiling, "requests": requests}


def month_on_a_fresh_runner(work: Path, endpoint: str, conn: Connection) -> dict[str, Any]:
    """A month of hourly keys already in the bucket (parts, manifest, marker each); a
    runner with no state runs the month: how many LIST calls before it knows it is done."""
    from backfill.keys import Granularity, expand, key_at
    from backfill.layout import key_folder

    client = _bucket(endpoint, "bench-month")
    last = key_at(datetime.now(UTC) - timedelta(days=2), Granularity.HOUR)
    keys = expand(key_at(last.start - timedelta(hours=719), Granularity.HOUR), last)
    for key in keys:
        folder = f"raw/{key_folder('{type}/dt={date}/hour={hour}', key, 'visit')}"
        for name in ("part-00000.csv.gz", "part-00001.csv.gz", "_manifest.json", "_SUCCESS"):
            client.put_object(Bucket="bench-month", Key=f"{folder}/{name}", Body=b"x")
    env = {**env_for("http://127.0.0.1:9"), **S3, "AWS_ENDPOINT_URL": endpoint,
           "XDG_STATE_HOME": str(work / "month-state")}  # no API at all: a call would fail
    args = ["run", "--from", keys[0].name, "--to", keys[-1].name, "--granularity", "hour",
            "--types", "visit", "--quiet", "--out", "s3://bench-month/raw"]
    _ask(conn, "reset")
    fresh = backfill_cli(args, env, work)
    fresh_requests = _ask(conn, "counts")
    _ask(conn, "reset")
    warm = backfill_cli(args, env, work)
    warm_requests = _ask(conn, "counts")
    return {"keys": len(keys), "objects": 4 * len(keys), "fresh": fresh,
            "fresh_requests": fresh_requests, "warm": warm, "warm_requests": warm_requests}


def requests_per_unit(work: Path, endpoint: str, conn: Connection) -> dict[str, Any]:
    """A day of hourly keys of one type fetched into the bucket: requests per unit."""
    from backfill.keys import Granularity, key_at

    _bucket(endpoint, "bench-day")
    last = key_at(datetime.now(UTC) - timedelta(hours=30), Granularity.HOUR)
    first = key_at(last.start - timedelta(hours=23), Granularity.HOUR)
    with emulator(data_dir=work / "emulator-day", job_seconds=0.0, flat_data=True,
                  bytes_per_hour=64 * 1024, part_size=32 * 1024) as url:
        env = {**env_for(url), **S3, "AWS_ENDPOINT_URL": endpoint,
               "XDG_STATE_HOME": str(work / "day-state")}
        _ask(conn, "reset")
        run = backfill_cli(["run", "--from", first.name, "--to", last.name, "--granularity",
                            "hour", "--types", "visit", "--quiet", "--out",
                            "s3://bench-day/raw"], env, work)
        counts = _ask(conn, "counts")
    return {"units": 24, "parts": 48, "run": run, "requests": counts}


def measure_store(work: Path) -> dict[str, Any]:
    with s3_server() as (endpoint, conn):
        result = {
            "big": throughput_to_store(work, endpoint, conn, part_mb=64, parts=16,
                                       downloads=16),
            "month": month_on_a_fresh_runner(work, endpoint, conn),
            "day": requests_per_unit(work, endpoint, conn),
        }
        conn.send("stop")
    return result


def report_store(r: dict[str, Any]) -> None:
    big, month, day = r["big"], r["month"], r["day"]
    local: Measured = big["local"]
    remote: Measured = big["remote"]
    print(f"| to S3 (moto on loopback), {big['parts']} × 64 MiB, --downloads "
          f"{big['downloads']} | {big['remote_mbps']:.0f} MiB/s (exit {remote.code}) vs the "
          f"same run to local disk {big['local_mbps']:.0f} MiB/s; the store's own ceiling (a "
          f"plain obstore upload loop) {big['ceiling_mbps']:.0f} MiB/s | (the store bounds it)"
          " |")
    print(f"| peak RSS to S3, 64 MiB parts, --downloads {big['downloads']} | "
          f"{remote.peak_rss_mb:.0f} MB (local disk: {local.peak_rss_mb:.0f} MB) | ≤ 150 MB |")
    print(f"| requests to S3 for those {big['parts']} parts | {_counts(big['requests'])} | — |")
    fresh, warm = month["fresh_requests"], month["warm_requests"]
    print(f"| fresh runner, a month of hourly keys complete in the bucket ({month['keys']} "
          f"keys, {month['objects']:,} objects) | {fresh.get('LIST', 0)} LIST calls, no export"
          f" call, {month['fresh'].seconds:.1f} s (exit {month['fresh'].code}); again with "
          f"the cache: {warm.get('LIST', 0)} LIST, {month['warm'].seconds:.1f} s | a few per "
          "type and month |")
    per = {k: v / day["units"] for k, v in day["requests"].items()}
    print("| requests per fetched unit (24 hourly keys, 64 KiB in 32 KiB parts) | "
          + ", ".join(f"{v:.1f} {k}" for k, v in sorted(per.items()))
          + f" (exit {day['run'].code}) | parts + manifest + marker |")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="backfill-store-bench-") as folder:
        report_store(measure_store(Path(folder)))
