import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.model.delay import DelayPattern


@pytest.mark.parametrize("num_codebooks", [1, 2, 3, 4])
@pytest.mark.parametrize("num_frames", [0, 1, 5])
def test_apply_revert_roundtrip(num_codebooks, num_frames):
    pattern = DelayPattern(num_codebooks, 16)
    gen = torch.Generator().manual_seed(num_codebooks * 10 + num_frames)
    codes = torch.randint(0, 16, (3, num_codebooks, num_frames), generator=gen)
    delayed = pattern.apply(codes)
    assert delayed.shape == (3, num_codebooks, num_frames + num_codebooks - 1)
    assert delayed.dtype == torch.long
    assert torch.equal(pattern.revert(delayed), codes)
    # Every cell outside the valid mask is the pad; every cell inside is the code.
    mask = pattern.valid_mask(delayed.shape[-1])
    assert torch.all(delayed[:, ~mask] == pattern.pad_id)
    assert torch.all(delayed[:, mask] < 16)


def test_apply_literal_layout():
    pattern = DelayPattern(3, 10)
    assert pattern.pad_id == 10 and pattern.vocab_size == 11
    codes = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 1, 2]]])  # (1, 3, 4)
    P = 10
    expected = torch.tensor(
        [
            [
                [1, 2, 3, 4, P, P],
                [P, 5, 6, 7, 8, P],
                [P, P, 9, 0, 1, 2],
            ]
        ]
    )
    assert torch.equal(pattern.apply(codes), expected)
    assert torch.equal(pattern.revert(expected), codes)


def test_valid_mask_literal():
    pattern = DelayPattern(3, 10)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pattern.valid_mask(6), expected)
    # A stream prefix of 4 steps whose frames keep coming: only the leading cells are empty.
    prefix = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(pattern.valid_mask(4, num_frames=100), prefix)


def test_revert_prefix_keeps_only_complete_frames():
    pattern = DelayPattern(4, 8)
    codes = torch.arange(4 * 6).reshape(1, 4, 6) % 8
    delayed = pattern.apply(codes)
    for num_steps in range(delayed.shape[-1] + 1):
        reverted = pattern.revert(delayed[..., :num_steps])
        expected_frames = pattern.frames_complete_at(num_steps - 1)
        assert reverted.shape == (1, 4, expected_frames)
        assert torch.equal(reverted, codes[..., :expected_frames])


def test_frames_complete_and_step_of():
    pattern = DelayPattern(4, 8)
    assert [pattern.frames_complete_at(s) for s in range(-1, 7)] == [0, 0, 0, 0, 1, 2, 3, 4]
    assert pattern.step_of(0, 0) == 0
    assert pattern.step_of(5, 3) == 8
    assert pattern.frames_complete_at(pattern.step_of(5, 3)) == 6  # frame 5 done at its last code
    assert pattern.frames_complete_at(pattern.step_of(5, 3) - 1) == 5
    assert DelayPattern(1, 8).frames_complete_at(0) == 1
    assert pattern.num_steps(10) == 13


def test_emitted_frame():
    pattern = DelayPattern(4, 8)
    assert pattern.emitted_frame(0).tolist() == [0, -1, -1, -1]
    assert pattern.emitted_frame(2).tolist() == [2, 1, 0, -1]
    assert pattern.emitted_frame(7).tolist() == [7, 6, 5, 4]
    assert pattern.emitted_frame(7, num_frames=6).tolist() == [-1, -1, 5, 4]
    # Consistent with step_of for every cell.
    for step in range(8):
        for q, frame in enumerate(pattern.emitted_frame(step).tolist()):
            if frame >= 0:
                assert pattern.step_of(frame, q) == step


def test_apply_errors():
    pattern = DelayPattern(4, 8)
    with pytest.raises(ConfigError, match="shape"):
        pattern.apply(torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="codebooks"):
        pattern.apply(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer"):
        pattern.apply(torch.zeros(1, 4, 5))
    with pytest.raises(ConfigError, match=r"\[0, 8\)"):
        pattern.apply(torch.full((1, 4, 5), 8))  # the pad id is not a code
    with pytest.raises(ConfigError, match=r"\[0, 8\)"):
        pattern.apply(torch.full((1, 4, 5), -1))


def test_revert_rejects_special_token_at_code_position():
    pattern = DelayPattern(2, 8)
    delayed = pattern.apply(torch.ones(1, 2, 3, dtype=torch.long))
    delayed[0, 1, 2] = pattern.pad_id  # codebook 1 of frame 1 deleted
    with pytest.raises(ConfigError, match="special token"):
        pattern.revert(delayed)
    with pytest.raises(ConfigError, match="codebooks"):
        pattern.revert(torch.zeros(1, 3, 5, dtype=torch.long))


@pytest.mark.parametrize(("num_codebooks", "codebook_size"), [(0, 8), (4, 0), (True, 8), (4, 2.0)])
def test_bad_pattern(num_codebooks, codebook_size):
    with pytest.raises(ConfigError):
        DelayPattern(num_codebooks, codebook_size)


def test_bad_indices():
    pattern = DelayPattern(4, 8)
    with pytest.raises(ConfigError, match="codebook"):
        pattern.step_of(0, 4)
    with pytest.raises(ConfigError, match="frame"):
        pattern.step_of(-1, 0)
    with pytest.raises(ConfigError, match="step"):
        pattern.frames_complete_at(-2)
    with pytest.raises(ConfigError, match="step"):
        pattern.emitted_frame(-1)
