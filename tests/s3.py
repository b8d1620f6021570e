"""A real S3 server on loopback (moto in server mode), and a bucket per test."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Never the instance metadata service: tests talk to 127.0.0.1 only.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 on 127.0.0.1 and a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def s3_server_process() -> Iterator[str]:
    """moto's S3 in a process of its own, on 127.0.0.1: for clients that hold the GIL while
    they wait for an answer (delta-rs opening a table), which an in-process server could
    then never give."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Bucket:
    """One bucket of the server, seen through boto3 (not through the code under test)."""

    endpoint: str
    name: str
    client: Any

    @classmethod
    def create(cls, endpoint: str) -> Bucket:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        name = f"gio-{secrets.token_hex(6)}"
        client.create_bucket(Bucket=name)
        return cls(endpoint, name, client)

    def url(self, prefix: str = "raw") -> str:
        return f"s3://{self.name}/{prefix}"

    def env(self) -> dict[str, str]:
        """What a user's shell would hold to reach this store."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def names(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name,
                                                                      Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def files(self, prefix: str = "raw/") -> dict[str, bytes]:
        """Every object under ``prefix``, by its path below it."""
        return {k[len(prefix):]: self.read(k) for k in self.names(prefix)}

    def uploads_in_progress(self) -> list[str]:
        answer = self.client.list_multipart_uploads(Bucket=self.name)
        return [u["Key"] for u in answer.get("Uploads", [])]
