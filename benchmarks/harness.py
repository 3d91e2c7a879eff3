"""The app in a real browser: a `streamlit run` on a free loopback port and Debian's Chromium.

Shared by the browser tests (tests/app/) and the browser benchmarks. Chromium is Debian's
`/usr/bin/chromium` driven by Playwright for Python (never `playwright install`); a server is
stopped by the PID of its process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "ROOT",
    "chromium",
    "free_port",
    "start_streamlit",
    "stop",
    "streamlit_server",
    "wait_healthy",
]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_streamlit(
    port: int,
    script: str = "app.py",
    args: tuple[str, ...] = (),
    *,
    env: Mapping[str, str] | None = None,
    output: IO[Any] | int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """`streamlit run SCRIPT -- ARGS` in its own process group (see `stop`)."""
    command = [sys.executable, "-m", "streamlit", "run", script, f"--server.port={port}",
               "--server.address=127.0.0.1", "--server.headless=true",
               "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"]  # fmt: skip
    if args:
        command += ["--", *args]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 120, *, log: str = ""
) -> None:
    """Return once `url` answers /_stcore/health; raise if the server exits or never does."""
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited before it was healthy{where}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"streamlit was not healthy in {timeout:.0f} s{where}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server's process group: SIGTERM, then SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def streamlit_server(
    script: str = "app.py",
    *args: str,
    env: Mapping[str, str] | None = None,
    log_name: str = "streamlit.log",
    timeout: float = 120,
) -> Iterator[str]:
    """A healthy server's URL; its output goes to artifacts/LOG_NAME; stopped on exit."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    with ARTIFACTS.joinpath(log_name).open("w") as log:
        full_env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        proc = start_streamlit(port, script, args, env=full_env, output=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, timeout, log=f"artifacts/{log_name}")
            yield url
        finally:
            stop(proc)


@contextmanager
def chromium(
    profile: Path | None = None, *, width: int = 1500, height: int = 1000, downloads: bool = False
) -> Iterator[Any]:
    """A persistent Chromium context (a temporary profile unless given); yields the context."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile or scratch), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height}, accept_downloads=downloads,
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()
