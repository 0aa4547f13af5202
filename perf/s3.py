"""A real S3-compatible server (moto) on loopback, for the tests of object-store inputs and
outputs, and the credentials it accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def options(port: int) -> str:
    """The URI query that points pyarrow's S3 client at a server on loopback."""
    return f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


@contextmanager
def moto_server():
    """(port, a pyarrow filesystem that may create buckets) of a fresh moto server."""
    from sampleiqa.server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(S3_ENV)
    try:
        yield port, wait_for_s3(options(port) + "&allow_bucket_creation=true")
    finally:
        proc.kill()
        proc.wait()


def wait_for_s3(query: str, timeout: float = 30):
    import pyarrow.fs as pa_fs

    deadline = time.monotonic() + timeout
    while True:
        try:
            fs = pa_fs.FileSystem.from_uri(f"s3://probe?{query}")[0]
            fs.get_file_info(pa_fs.FileSelector("", recursive=False))
            return fs
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
