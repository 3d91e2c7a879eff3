"""Every test here drives the app (AppTest sessions, streamlit servers, Chromium): all slow.

The browser tests share a server (`app_server`, `server`; a module can pass the app arguments
by overriding `app_args`) and a Chromium tab (`page`) from `benchmarks.harness`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness import ARTIFACTS, chromium, streamlit_server

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def _warm_up_ends_with_the_module() -> Iterator[None]:
    """AppTest runs the app in this process, and with it the pattern-cache warm-up thread:
    let it finish before tests elsewhere trace without the app's export lock."""
    yield
    for thread in threading.enumerate():
        if thread.name == "warm-pattern-cache":
            thread.join(timeout=600)


@pytest.fixture
def app_args() -> tuple[str, ...]:
    """The app's own arguments (after `--`); none: it opens the default sample."""
    return ()


@pytest.fixture
def app_server(
    tmp_path_factory: pytest.TempPathFactory,
    app_args: tuple[str, ...],
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, Path]]:
    """`streamlit run app.py` with a fresh workspace on a free loopback port, stopped by PID.

    Yields the URL and the workspace folder; the server's output is in
    artifacts/streamlit-MODULE.log.
    """
    workspace = tmp_path_factory.mktemp("workspace")
    log_name = f"streamlit-{request.module.__name__.rpartition('.')[2]}.log"
    env = {"WORKBENCH_WORKSPACE": str(workspace)}
    with streamlit_server("app.py", *app_args, env=env, log_name=log_name, timeout=90) as url:
        yield url, workspace


@pytest.fixture
def server(app_server: tuple[str, Path]) -> str:
    return app_server[0]


@pytest.fixture
def page(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A Chromium page; when the test fails, every open tab is saved as a screenshot in
    artifacts/ (failed-TEST-N.png) to see what the browser showed."""
    with chromium(tmp_path / "profile", downloads=True) as context:
        try:
            yield context.new_page()
        finally:
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                for n, tab in enumerate(context.pages):
                    tab.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}-{n}.png"),
                                   full_page=True)  # fmt: skip
