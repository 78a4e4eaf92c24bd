"""The serving runtime's process-wide settings: what start() changes, stop() gives back."""

from __future__ import annotations

import gc

from bot.runtime import GC_THRESHOLDS, Runtime
from tests.conftest import RecordingChannel, make_settings


async def test_serving_collects_young_objects_in_large_batches(db_url: str) -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    runtime = Runtime(make_settings(db_url), channels=[])
    runtime.channels["test"] = RecordingChannel()
    await runtime.start()
    try:
        # the start-up heap is frozen and young objects are collected 50,000 at a time
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        await runtime.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_a_runtime_that_only_reads_leaves_the_collector_alone(db_url: str) -> None:
    before = gc.get_threshold()
    runtime = Runtime(make_settings(db_url), channels=[])
    await runtime.start(dispatch=False)  # commands, tests: no freeze, no new thresholds
    try:
        assert gc.get_threshold() == before
    finally:
        await runtime.stop()
