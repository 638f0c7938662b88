"""A real `stemstream serve` process (uvicorn, an untrained tiny model over the mock codec) on
a free localhost port, for the tests that talk to it over sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest


@pytest.fixture(scope="session")
def served_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "stemstream.cli", "serve", "--model", "random-tiny-mock",
         "--port", str(port), "--route", "eager"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
