from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stemstream.config import load_config, to_dict
from stemstream.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.99)


@dataclass(frozen=True)
class Cfg:
    steps: int = 10
    name: str = "x"
    amp: bool = False
    out: Path | None = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 3.0e-4\n")
    cfg = load_config(Cfg, path, ["optim.betas=[0.5, 0.6]", "amp=true", "out=/tmp/x"])
    assert cfg.steps == 5 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.betas == (0.5, 0.6) and cfg.amp is True and cfg.out == Path("/tmp/x")
    assert to_dict(cfg)["optim"] == {"lr": 3e-4, "betas": [0.5, 0.6]}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stepz=3"], "unknown config key.*stepz"),
        (["optim.lrr=3"], "unknown config key.*optim.lrr"),
        (["steps=abc"], "steps: expected int"),
        (["steps=1.5"], "steps: expected int"),
        (["amp=maybe"], "amp: expected true/false"),
        (["steps=0"], "steps must be >= 1"),
        (["steps"], "not key=value"),
    ],
)
def test_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, None, overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
