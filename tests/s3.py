"""A real S3-compatible server on 127.0.0.1 for the object-storage tests: moto in server mode.

The ``s3`` fixture starts ``python -m moto.server`` on a free loopback port
and points this process at it through the standard AWS environment
(``AWS_ENDPOINT_URL`` and test credentials), which Dask workers and
subprocesses inherit. It yields an :class:`S3`, with a fresh bucket per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from flows.runner import find_free_port


@dataclass
class S3:
    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    @property
    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)

    def put(self, local, *parts: str) -> str:
        """Upload a local file (or folder, recursively) and return its URL."""
        url = self.url(*parts)
        self.fs.put(str(local), url, recursive=os.path.isdir(local))
        return url

    def last_modified(self, *parts: str) -> dict[str, object]:
        """Every object under a prefix and when it was last written."""
        found = self.fs.find(self.url(*parts), detail=True)
        return {name: info["LastModified"] for name, info in found.items()}


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture(scope="session")
def s3_server():
    """``(endpoint, environment)`` of a moto S3 server for the session; the environment is set here too."""
    port = find_free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        _wait_listening(port, process)
        yield endpoint, env
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3(s3_server) -> S3:
    """A fresh, empty bucket on the session's S3 server."""
    endpoint, env = s3_server
    store = S3(endpoint, f"haloflow-{uuid.uuid4().hex[:12]}", env)
    store.fs.mkdir(store.bucket)
    return store
