import pytest
import torch

from stemstream.errors import StemstreamError
from stemstream.model.kv_cache import CacheOverflowError, KVCache

B, HKV, DH = 2, 2, 4
torch.manual_seed(0)


def _kv(s: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Entry i carries the value i everywhere, so tests can read positions back from contents.
    values = torch.arange(start, start + s, dtype=torch.float32).view(1, 1, s, 1)
    k = values.expand(B, HKV, s, DH).clone()
    return k, -k


def test_linear_update_appends_and_returns_views() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=8)
    view = cache.update(*_kv(3))
    assert view.keys.shape == (B, HKV, 3, DH)
    assert view.positions.tolist() == [0, 1, 2]
    view = cache.update(*_kv(2, 3))
    assert view.positions.tolist() == [0, 1, 2, 3, 4]
    assert view.keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert view.values[1, 1, :, 0].tolist() == [0, -1, -2, -3, -4]
    assert view.keys.data_ptr() == cache.keys.data_ptr()  # a view, not a copy


def test_explicit_positions_are_stored_and_continued() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=8)
    cache.update(*_kv(2), positions=torch.tensor([10, 11]))
    view = cache.update(*_kv(1))
    assert view.positions.tolist() == [10, 11, 12]


def test_overflow_raises_clear_error() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=4)
    cache.update(*_kv(3))
    with pytest.raises(CacheOverflowError, match="exceed its capacity of 4"):
        cache.update(*_kv(2))
    assert issubclass(CacheOverflowError, StemstreamError)
    assert cache.length == 3  # the failed update changed nothing


def test_bad_shapes_raise() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=4)
    with pytest.raises(ValueError, match="expected keys/values"):
        cache.update(torch.zeros(B, HKV + 1, 1, DH), torch.zeros(B, HKV + 1, 1, DH))
    with pytest.raises(ValueError, match="positions"):
        cache.update(*_kv(2), positions=torch.tensor([0]))


def test_ring_overwrites_oldest_with_constant_memory() -> None:
    window = 3
    cache = KVCache(B, HKV, DH, max_seq_len=1, window=window)
    view = cache.update(*_kv(1))
    assert view.positions.tolist() == [0]
    for t in range(1, 20):
        view = cache.update(*_kv(1, t))
        assert cache.keys.shape == (B, HKV, window, DH)
        expected = set(range(max(0, t - window + 1), t + 1))
        assert set(view.positions.tolist()) == expected
        # Contents follow their positions whatever the slot order.
        assert view.keys[0, 0, :, 0].tolist() == [float(p) for p in view.positions.tolist()]


def test_ring_block_update_returns_old_ring_plus_block() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=1, window=4)
    cache.update(*_kv(4))
    view = cache.update(*_kv(3, 4))
    # Query 4 still needs positions 1..3, so the view holds the old ring and the block.
    assert view.positions.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(cache.positions.tolist()) == [3, 4, 5, 6]
    view = cache.update(*_kv(6, 7))  # longer than the window
    assert view.positions.shape == (10,)
    assert sorted(cache.positions.tolist()) == [9, 10, 11, 12]
    assert sorted(cache.keys[0, 0, :, 0].tolist()) == [9.0, 10.0, 11.0, 12.0]


def test_ring_partial_fill_marks_nothing_invalid() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=1, window=5)
    view = cache.update(*_kv(2))
    assert view.positions.tolist() == [0, 1]
    assert cache.positions.tolist() == [0, 1, -1, -1, -1]


def test_reset_clears_everything() -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=4)
    cache.update(*_kv(3, 1))
    cache.reset()
    assert cache.length == 0 and cache.keys.abs().sum() == 0
    assert cache.positions.tolist() == [-1] * 4
    assert cache.update(*_kv(1)).positions.tolist() == [0]


@pytest.mark.parametrize("window", [None, 3])
def test_state_round_trip_continues_bit_identically(window: int | None) -> None:
    cache = KVCache(B, HKV, DH, max_seq_len=16, window=window)
    for _ in range(5):
        cache.update(torch.randn(B, HKV, 1, DH), torch.randn(B, HKV, 1, DH))
    state = cache.get_state()
    step = torch.randn(B, HKV, 2, DH), torch.randn(B, HKV, 2, DH)
    first = cache.update(*step)
    first = [t.clone() for t in first]

    restored = KVCache(B, HKV, DH, max_seq_len=16, window=window)
    restored.set_state(state)
    second = restored.update(*step)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert cache.state_dict() == {}  # buffers are non-persistent


def test_set_state_rejects_mismatch() -> None:
    state = KVCache(B, HKV, DH, max_seq_len=8).get_state()
    with pytest.raises(ValueError, match="shape"):
        KVCache(B, HKV, DH, max_seq_len=4).set_state(state)
    with pytest.raises(ValueError, match="needs keys"):
        KVCache(B, HKV, DH, max_seq_len=8).set_state({"keys": state["keys"]})


@pytest.mark.parametrize(("window", "expected"), [(None, [0, 1, 2, 3]), (4, [1, 2, 3])])
def test_rollback_forgets_newest_entries(window: int | None, expected: list[int]) -> None:
    # In ring mode position 4 overwrote position 0, which rollback cannot bring back.
    cache = KVCache(B, HKV, DH, max_seq_len=16, window=window)
    cache.update(*_kv(3))
    cache.update(*_kv(2, 3))
    cache.rollback(2)
    view = cache.update(*_kv(1, 3))
    valid = view.positions[view.positions >= 0]
    assert sorted(valid.tolist()) == expected
    assert view.keys[0, 0, view.positions == 3, 0].tolist() == [3.0]
    with pytest.raises(ValueError, match="roll back"):
        cache.rollback(10)
