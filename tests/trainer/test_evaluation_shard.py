"""`EvaluationShard`: ranks' batches joined step by step in rank order are one process's batches."""

from __future__ import annotations

import pytest

from trainbus.trainer._samplers import EvaluationShard


def _shards(
    length: int, batch_size: int, world_size: int, drop_last: bool
) -> list[EvaluationShard]:
    order = list(reversed(range(length)))  # any order: the shard keeps it
    return [
        EvaluationShard(order, batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("length", [0, 1, 2, 5, 7, 11, 12])
def test_real_rows_in_rank_order_are_the_single_process_batches(
    length: int, batch_size: int, world_size: int, drop_last: bool
) -> None:
    """Every rank runs as many batches; their real rows, step by step in rank order, are the
    single-process batches, each sample once; a rank runs at most one filler."""
    shards = _shards(length, batch_size, world_size, drop_last)
    alone = _shards(length, batch_size, 1, drop_last)[0]
    per_rank = [list(shard) for shard in shards]
    assert {len(batches) for batches in per_rank} == {len(shards[0])}
    joined = [
        batches[step][: shard.rows(step)]
        for step in range(len(shards[0]))
        for shard, batches in zip(shards, per_rank, strict=True)
        if shard.rows(step)
    ]
    assert joined == list(alone)
    for shard, batches in zip(shards, per_rank, strict=True):
        fillers = [step for step in range(len(batches)) if shard.rows(step) == 0]
        assert len(fillers) <= 1
        assert all(batches[step] == alone.batches[0] for step in fillers)


def test_a_short_last_batch_stays_short_and_drop_last_drops_it() -> None:
    """11 samples in batches of 3 on 2 ranks: rank 1's last batch holds the 2 left over, as one
    process's does; with drop_last it is gone and rank 1 runs a filler instead."""
    _, second = _shards(11, 3, 2, drop_last=False)
    assert [second.rows(step) for step in range(2)] == [3, 2]
    first, second = _shards(11, 3, 2, drop_last=True)
    assert [first.rows(step) for step in range(2)] == [3, 3]
    assert [second.rows(step) for step in range(2)] == [3, 0]
