import numpy as np
import pytest
import torch

from stemstream import checkpoint
from stemstream.checkpoint import CheckpointError


def test_roundtrip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    rng = np.random.default_rng(0)
    rng.random(3)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_m = checkpoint.flatten_optimizer(opt, "optim")
    rng_t, rng_m = checkpoint.rng_state(rng)
    path = checkpoint.save(
        tmp_path / "c.safetensors",
        tensors | opt_t | rng_t,
        {"step": 1, "optim": opt_m, "rng": rng_m},
    )
    expected_draw = rng.random()
    expected_torch = torch.rand(3)

    tensors2, meta = checkpoint.load(path)
    assert meta["step"] == 1 and "code_version" in meta
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict({k[6:]: v for k, v in tensors2.items() if k.startswith("model/")})
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    checkpoint.restore_optimizer(opt2, tensors2, meta["optim"], "optim")
    for a, b in zip(
        opt.state_dict()["state"].values(), opt2.state_dict()["state"].values(), strict=True
    ):
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name]))
    rng2 = np.random.default_rng(123)
    checkpoint.restore_rng(tensors2, meta["rng"], rng2)
    assert rng2.random() == expected_draw
    assert torch.equal(torch.rand(3), expected_torch)


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.safetensors")
    good = checkpoint.save(tmp_path / "g.safetensors", {"w": torch.ones(1000)}, {"a": 1})
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a readable"):
        checkpoint.load(truncated)
    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        checkpoint.load(garbage)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a stemstream checkpoint"):
        checkpoint.load(tmp_path / "foreign.safetensors")
