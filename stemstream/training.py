"""The skeleton every trainer shares (codec, language models, COCOLA): resume from the newest
checkpoint, atomic checkpoints with rotation, step and time limits, metrics and a progress bar.

A trainer subclasses :class:`TrainLoop` and keeps only what differs: what one step does
(:meth:`TrainLoop.advance`: draw a batch, optimise on it), what validation measures, and what
its checkpoints hold (:meth:`TrainLoop.checkpoint_state` / :meth:`TrainLoop.load_checkpoint`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from stemstream import checkpoint
from stemstream.config import to_dict
from stemstream.metrics import MetricsLogger
from stemstream.outputs import prepare_output_dir, write_text

log = logging.getLogger(__name__)


def pick_device(device: str, threads: int = 0) -> str:
    """``device`` with ``auto`` resolved (CUDA when available, else CPU); ``threads > 0`` sets
    torch's intra-op threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TrainLoop:
    """Resume, loop, log, validate, checkpoint. Subclasses set :attr:`bar_label` and, in their
    ``__init__``, call :meth:`setup_loop`; the config they pass has ``steps``, ``log_every``,
    ``valid_every`` and ``checkpoint_every``.

    Hooks (defaults do nothing / fit one process): :meth:`on_fresh_start`,
    :meth:`after_validation`, :meth:`bar_postfix`, :meth:`barrier`, :meth:`time_up`,
    :meth:`on_exit`, :attr:`is_main`.
    """

    bar_label = "train"
    is_main = True

    def setup_loop(self, config: Any, out_dir: str | Path, keep_checkpoints: int) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.keep_checkpoints = keep_checkpoints
        self.step = 0
        self._metrics = MetricsLogger(self.out_dir)
        self._started = time.perf_counter()

    # ------------------------------------------------------------------- checkpoints
    def checkpoint_paths(self) -> list[Path]:
        """This run's checkpoints, oldest first."""
        return sorted((self.out_dir / "checkpoints").glob("step_*.safetensors"))

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, meta)`` of a checkpoint at :attr:`step`."""
        raise NotImplementedError

    def load_checkpoint(self, path: Path) -> None:
        """Restore what :meth:`checkpoint_state` saved (and :attr:`step`)."""
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        """Write the state atomically; drop checkpoints beyond ``keep_checkpoints``."""
        tensors, meta = self.checkpoint_state()
        path = self.out_dir / "checkpoints" / f"step_{self.step:07d}.safetensors"
        checkpoint.save(path, tensors, meta)
        for old in self.checkpoint_paths()[: -self.keep_checkpoints]:
            old.unlink()
        return path

    # ------------------------------------------------------------------------ hooks
    def advance(self) -> dict[str, float]:
        """One optimisation step (drawing its own batch); its metrics."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def on_fresh_start(self) -> None:
        """Called when there is no checkpoint to resume (e.g. a warm start)."""

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Called after each validation (e.g. to stop a run that collapsed)."""

    def bar_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['loss/train']:.3f}"} if "loss/train" in metrics else {}

    def barrier(self) -> None:
        """Wait for every process (distributed runs)."""

    def time_up(self, began: float, limit: float | None) -> bool:
        """Whether ``limit`` seconds have passed since ``began`` (every process agrees)."""
        return limit is not None and time.perf_counter() - began > limit

    def on_exit(self) -> None:
        """Called once the loop ends, normally or not."""

    @property
    def elapsed(self) -> float:
        """Seconds since this :meth:`run` started."""
        return time.perf_counter() - self._started

    # ------------------------------------------------------------------------- loop
    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.is_main and metrics:
            self._metrics.log(self.step, metrics)

    def _checkpoint_all(self) -> None:
        if self.is_main:
            self.save_checkpoint()
        self.barrier()

    def run(
        self,
        progress: bool = True,
        stop_after: int | None = None,
        time_limit_s: float | None = None,
    ) -> dict[str, float]:
        """Train until ``config.steps`` (or ``stop_after`` more steps, or ``time_limit_s``
        seconds, whichever comes first, then checkpoint); resume if a checkpoint exists.

        Returns:
            The last validation metrics.
        """
        from tqdm import tqdm

        cfg = self.config
        if self.is_main:
            prepare_output_dir(self.out_dir, "out_dir")
        self.barrier()
        existing = self.checkpoint_paths()
        if existing:
            self.load_checkpoint(existing[-1])
            log.info("resumed from %s (step %d)", existing[-1], self.step)
        else:
            self.on_fresh_start()
        if self.is_main:
            write_text(self.out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg)))
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=end, initial=self.step, desc=self.bar_label, unit="step",
                   disable=not (progress and self.is_main))
        last_valid: dict[str, float] = {}
        self._started = began = time.perf_counter()
        try:
            while self.step < end:
                if self.time_up(began, time_limit_s):
                    log.info("time limit reached at step %d", self.step)
                    last_valid = self.validate()
                    self.log_metrics(last_valid)
                    self._checkpoint_all()
                    break
                metrics = self.advance()
                self.step += 1
                if self.step % cfg.log_every == 0:
                    self.log_metrics(metrics)
                    bar.set_postfix(self.bar_postfix(metrics))
                if self.step % cfg.valid_every == 0 or self.step == end:
                    last_valid = self.validate()
                    self.log_metrics(last_valid)
                    self.after_validation(last_valid)
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    self._checkpoint_all()
                bar.update()
        finally:
            bar.close()
            self._metrics.flush()
            self.on_exit()
        return last_valid
