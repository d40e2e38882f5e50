"""The gateway producer's partitioner: the same partition as aiokafka's default for every key
(the sync endpoint and the cluster fault suite compute it with murmur2 too)."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from commands.adapters.kafka_log import remembered_partitioner


def test_remembered_partitions_are_the_default_partitioners() -> None:
    rng = random.Random(19)
    default = DefaultPartitioner()
    for _ in range(2000):
        key = rng.randbytes(rng.randint(0, 60))
        partitions = list(range(rng.choice([1, 3, 12, 24, 100])))
        expected = default(key, partitions, partitions)
        assert remembered_partitioner(key, partitions, partitions) == expected
        assert remembered_partitioner(key, partitions, partitions) == expected  # remembered


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    assert remembered_partitioner(None, [0, 1, 2], [2]) == 2
    assert remembered_partitioner(None, [0, 1, 2], []) in {0, 1, 2}
