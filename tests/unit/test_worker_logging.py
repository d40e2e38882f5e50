"""The worker's Faust ``Worker`` leaves the root logger at its level: with Faust's terminal
spinner the root logger went to DEBUG for good, and every ``log.debug`` of aiokafka, mode and
Faust built a record (issue #19)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from tidings.worker import faust_worker


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    level, handlers = logger.level, list(logger.handlers)
    logger.handlers = [logging.NullHandler()]
    logger.setLevel(logging.WARNING)
    yield logger
    logger.setLevel(level)
    logger.handlers = handlers


def _app() -> faust.App:
    return faust.App("t-worker-logging", broker="kafka://127.0.0.1:1", web_enabled=False)


def test_root_logger_stays_at_warning(root: logging.Logger) -> None:
    worker = faust_worker(_app())
    worker.on_setup_root_logger(root, logging.WARNING)
    assert root.level == logging.WARNING
    assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)


def test_fausts_own_worker_would_turn_debug_on(root: logging.Logger) -> None:
    # What faust_worker guards against; if Faust stops doing this, the guard can go.
    worker = faust.Worker(_app(), loglevel="WARNING", quiet=True)
    worker.on_setup_root_logger(root, logging.WARNING)
    assert root.level == logging.DEBUG
