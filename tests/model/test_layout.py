"""Index-level properties of the streaming decoder's sequence layouts."""

import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.model.layout import one_chunk_layout, training_layout


def _reachable(mask: torch.Tensor) -> torch.Tensor:
    """Transitive closure: what a deep stack of attention layers can see."""
    reach = mask.clone()
    for _ in range(mask.shape[0]):
        nxt = reach | ((reach.float() @ reach.float()) > 0)
        if torch.equal(nxt, reach):
            break
        reach = nxt
    return reach


@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_visible_input_is_exactly_the_allowed_horizon(t_f, k):
    steps, frames = 13, 13 + max(t_f, 0)
    layout = training_layout(steps, t_f, k, frames)
    reach = _reachable(layout.mask)
    for i in torch.nonzero(layout.loss).flatten().tolist():
        step = int(layout.positions[i])
        horizon = (step - step % k) + t_f  # frames < horizon are allowed
        seen = layout.input_frame[reach[i]]
        seen = seen[seen >= 0]
        assert seen.numel() == 0 or int(seen.max()) < horizon
        if 0 < horizon <= frames:
            assert int(seen.max()) == horizon - 1, "the newest allowed frame must be visible"
        # output tokens: exactly the steps before this one
        tokens = layout.token_step[reach[i]]
        assert sorted(set(tokens.tolist())) == list(range(-1, step))


@pytest.mark.parametrize("k", [2, 5])
def test_each_chunk_sees_what_the_one_chunk_formulation_sees(k):
    steps, t_f = 12, 1
    full = training_layout(steps, t_f, k, steps + t_f)
    for c in range(0, steps, k):
        ref = one_chunk_layout(c, steps, t_f, k, steps + t_f)
        for row in torch.nonzero(ref.loss).flatten().tolist():
            i = steps + row  # the chunk stream follows the fused stream
            visible = torch.nonzero(full.mask[i]).flatten()
            got = sorted(
                zip(
                    full.positions[visible].tolist(),
                    full.token_step[visible].tolist(),
                    full.input_frame[visible].tolist(),
                    strict=True,
                )
            )
            ref_visible = torch.nonzero(ref.mask[row]).flatten()
            want = sorted(
                zip(
                    ref.positions[ref_visible].tolist(),
                    ref.token_step[ref_visible].tolist(),
                    ref.input_frame[ref_visible].tolist(),
                    strict=True,
                )
            )
            assert got == want
            assert int(full.positions[i]) == int(ref.positions[row])


def test_k1_is_plain_causal_and_validation():
    layout = training_layout(5, 0, 1, 5)
    assert torch.equal(layout.mask, torch.tril(torch.ones(5, 5, dtype=torch.bool)))
    assert layout.loss.all() and layout.input_frame.tolist() == [-1, 0, 1, 2, 3]
    with pytest.raises(ConfigError, match="chunk size"):
        training_layout(5, 0, 0, 5)
    with pytest.raises(ConfigError, match="integer"):
        training_layout(5, 0.5, 1, 5)
