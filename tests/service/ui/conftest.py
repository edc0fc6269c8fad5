"""The dashboard's browser tests: a real headless Chromium (Debian's, driven by Playwright)
against real control planes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright

from tests.fixtures.live_stack import LiveStack, start_control_plane
from tests.fixtures.ray_cluster import RayCluster
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.stack import settings_on
from tests.service.ui.browser import WIDTHS, chromium_binary


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # Chromium's sandbox needs user namespaces, which a root container does not give.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_binary(), headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": WIDTHS["desktop"], "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def work_stack(
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: RayCluster,
    redis_server: RedisServer,
    tiny_models_dir: Path,
    serve_port: int,
) -> Iterator[LiveStack]:
    """A control plane of the module's own on the session's Ray cluster and Redis, for the
    flows that run jobs (the session's live stack holds exactly one job, which its metrics
    and dashboard tests count on)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    root = tmp_path_factory.mktemp("ui-work")
    settings = settings_on(root, ray_cluster, redis_server, tiny_models_dir, serve_port)
    proc, stack = start_control_plane(settings, root / "control-plane.log")
    try:
        yield stack
    finally:
        proc.stop()
        client.flushall()
        client.close()
