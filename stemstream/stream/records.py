"""A session's timing records — one per generated chunk, one per push — kept as rows of a
numpy table that holds the newest ``capacity`` of them (issue 17: an hour-long stream's memory
must stop growing after its first minute).

A Python object per chunk cost ~450 bytes (a dataclass instance and its boxed floats), and
the list of them filled only after ``keep_records`` chunks (10,000: 3.3 minutes at 50 chunks a
second), so the process kept growing for minutes. A row here is 106 bytes for a chunk and 32
for a push; a table grows by doubling up to ``capacity`` rows, then overwrites its oldest
row. Reading gives objects again (:class:`ChunkRecord`, or a tuple), built on demand:
``records[-50:]``, ``reversed(records)``, ``len(records)`` and iteration work as on a list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import numpy as np

T = TypeVar("T")

FIRST_ROWS = 256  # the table's first size; it doubles up to its capacity


@dataclass(slots=True)
class ChunkRecord:
    """Timing of one generated chunk (seconds on the session timeline; ``None`` = n/a).

    ``deadline`` is when the first audio sample this chunk completed must play; a chunk
    that completed no audio yet (the delay pattern's first ``K - 1`` steps) has none.
    ``recency_gap`` is the chunk's mean ``(t - c) - t_f`` in frames (SPEC section 1).
    """

    index: int
    step: int
    frames: int  # output frames this chunk made audible
    ready: float
    start: float
    model_end: float
    end: float
    model_s: float
    codec_out_s: float
    deadline: float | None
    slack: float | None
    missed: bool
    late_samples: int
    recency_gap: float
    new_chunk: bool = True  # False: frames decided earlier, rendered when the input ended

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_dtype(annotation: str) -> str:
    if annotation == "int":
        return "i8"
    if annotation == "bool":
        return "?"
    return "f8"  # float, and float | None as NaN


CHUNK_DTYPE = np.dtype([(f.name, _field_dtype(f.type)) for f in dataclasses.fields(ChunkRecord)])
OPTIONAL = tuple(f.name for f in dataclasses.fields(ChunkRecord) if "None" in str(f.type))


def _chunk_record(row: np.void) -> ChunkRecord:
    values = row.tolist()
    record = ChunkRecord(*values)
    for name in OPTIONAL:
        if getattr(record, name) != getattr(record, name):  # NaN: stored for None
            setattr(record, name, None)
    return record


def _chunk_row(record: ChunkRecord) -> tuple:
    return tuple(float("nan") if value is None else value
                 for value in (getattr(record, f) for f in CHUNK_DTYPE.names))


class RecordTable(Sequence, Generic[T]):
    """The newest ``capacity`` records of one kind, oldest first: rows of ``dtype``, written
    from ``to_row(record)`` (a tuple in field order) and read back with ``from_row(row)``."""

    def __init__(self, dtype: np.dtype, capacity: int, to_row: Callable[[T], tuple],
                 from_row: Callable[[np.void], T]) -> None:
        if capacity < 1:
            raise ValueError(f"a record table needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._rows = np.zeros(min(capacity, FIRST_ROWS), dtype)
        self._to_row, self._from_row = to_row, from_row
        self._count = 0  # records ever appended

    def append(self, record: T) -> None:
        size = self._rows.shape[0]
        if self._count == size and size < self.capacity:  # full, may grow: oldest at row 0
            grown = np.zeros(min(self.capacity, 2 * size), self._rows.dtype)
            grown[:size] = self._rows
            self._rows = grown
        self._rows[self._count % self._rows.shape[0]] = self._to_row(record)
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    def _row(self, index: int) -> np.void:
        """The ``index``-th kept record's row (0 = the oldest kept)."""
        first = self._count - len(self)
        return self._rows[(first + index) % self._rows.shape[0]]

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        length = len(self)
        if isinstance(index, slice):
            return [self._from_row(self._row(i)) for i in range(*index.indices(length))]
        if not -length <= index < length:
            raise IndexError(f"record {index} of {length}")
        return self._from_row(self._row(index % length))

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self)):
            yield self._from_row(self._row(i))

    def __eq__(self, other: object) -> bool:
        """Equal to a list (or another table) of the same records, as the list it replaces."""
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # mutable, as a list


def chunk_records(capacity: int) -> RecordTable[ChunkRecord]:
    """A table of :class:`ChunkRecord` (``None`` deadlines and slacks kept as NaN)."""
    return RecordTable(CHUNK_DTYPE, capacity, _chunk_row, _chunk_record)


PUSH_DTYPE = np.dtype([("arrival", "f8"), ("encode_start", "f8"), ("encode_end", "f8"),
                       ("frames", "i8")])


def push_records(capacity: int) -> RecordTable[tuple[float, float, float, int]]:
    """A table of pushes: ``(arrival, encode start, encode end, frames encoded)``."""
    return RecordTable(PUSH_DTYPE, capacity, tuple, lambda row: tuple(row.tolist()))
