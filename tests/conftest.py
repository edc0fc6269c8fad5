"""Shared test set-up. Fixture modules register here so every test package sees them."""

import os

# No model hub, no usage reporting, fast Ray Train reports: set before anything imports them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

pytest_plugins: list[str] = [
    "tests.fixtures.postgres",
    "tests.fixtures.app",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.redis_server",
    "tests.fixtures.stack",
    "tests.fixtures.live_stack",
    "tests.service.webhook_receiver",
]
