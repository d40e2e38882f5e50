"""Garbage-collector settings for long-running servers.

Python's cyclic collector scans every tracked object of a generation; a gateway holding
thousands of sockets (and a worker holding drivers and caches) has large old generations, and
full collections stall the event loop for hundreds of milliseconds (seen in the fan-out
benchmark: a third of the gateway's CPU). Objects alive after start-up are frozen out of
collection, and young collections run less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_for_server() -> None:
    """Call once, after start-up allocations."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
