"""A session's record tables behave as the bounded lists they replace, in a fraction of the
memory (issue 17: an hour-long stream's memory must stop growing after its first minute)."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from stemstream.stream.records import ChunkRecord, chunk_records, push_records


def make_record(i: int, rng: random.Random) -> ChunkRecord:
    audible = rng.random() < 0.7
    return ChunkRecord(
        index=i, step=i + 3, frames=rng.randint(0, 4), ready=rng.random(), start=rng.random(),
        model_end=rng.random(), end=rng.random(), model_s=rng.random(),
        codec_out_s=rng.random(), deadline=rng.random() if audible else None,
        slack=rng.uniform(-1, 1) if audible else None, missed=rng.random() < 0.2,
        late_samples=rng.randint(0, 99), recency_gap=rng.random(), new_chunk=rng.random() < 0.9,
    )


@pytest.mark.parametrize("capacity", [1, 3, 256, 300, 700])
def test_a_chunk_table_reads_as_the_newest_records_of_a_bounded_list(capacity):
    rng = random.Random(capacity)
    table, reference = chunk_records(capacity), []
    for i in range(2 * capacity + 301):  # past the first size, every doubling and the ring
        record = make_record(i, rng)
        table.append(record)
        reference = (reference + [record])[-capacity:]
        if i % 97 == 0 or i > 2 * capacity + 290:
            assert len(table) == len(reference)
            assert list(table) == reference
            assert table[-1] == reference[-1] and table[0] == reference[0]
            assert table[-50:] == reference[-50:]
            assert list(reversed(table)) == reference[::-1]
    assert table[-1].to_dict() == reference[-1].to_dict()
    with pytest.raises(IndexError):
        table[capacity]


def test_a_push_table_keeps_tuples_of_its_fields():
    table = push_records(2)
    for i in range(5):
        table.append((i + 0.5, i + 0.25, i + 0.75, i))
    assert list(table) == [(3.5, 3.25, 3.75, 3), (4.5, 4.25, 4.75, 4)]
    assert isinstance(table[-1][3], int)


def test_ten_thousand_records_take_a_fraction_of_their_objects_memory():
    rng = random.Random(0)
    records = [make_record(i, rng) for i in range(10_000)]
    pushes = [(rng.random(), rng.random(), rng.random(), 1) for _ in range(10_000)]
    tracemalloc.start()
    try:
        chunks, inputs = chunk_records(10_000), push_records(10_000)
        for record, push in zip(records, pushes, strict=True):
            chunks.append(record)
            inputs.append(push)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 106 bytes a chunk row and 32 a push row; the objects cost ~4.5 MiB and ~1.2 MiB
    assert held < 2 * 2**20, held


def test_a_table_needs_room_for_one_record():
    with pytest.raises(ValueError, match="capacity"):
        chunk_records(0)


def test_a_table_equals_the_list_of_its_records():
    rng = random.Random(1)
    records = [make_record(i, rng) for i in range(4)]
    table = chunk_records(3)
    assert table == [] and not table
    for record in records:
        table.append(record)
    assert table == records[1:] and table != records and table != records[:3]
