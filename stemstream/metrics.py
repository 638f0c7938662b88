"""Training metrics: one JSON line per record in ``OUT/metrics.jsonl`` (for plots and tests)
and TensorBoard scalars in ``OUT/tb`` when tensorboard is installed. Shared by the codec and
model trainers."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    """Appends ``{"step", "time", **metrics}`` records; the TensorBoard writer is made lazily."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self._writer = None  # None: not tried yet; False: tensorboard unavailable

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time()} | metrics
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                self._writer = False
        if self._writer:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()
