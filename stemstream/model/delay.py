"""MusicGen delay pattern over the K codebooks (RVQ levels) of a codec frame.

Codebook ``q`` of frame ``t`` sits at sequence step ``s = t + q``: at step ``s`` the model emits
codebook 0 of frame ``s``, codebook 1 of frame ``s - 1``, ..., codebook ``K - 1`` of frame
``s - K + 1``. A frame is complete (audible) at step ``t + K - 1``, once its last codebook
exists. ``T`` frames take ``S = T + K - 1`` steps.

Cells of the delayed grid that hold no code (before a codebook's first frame, after its last)
carry :attr:`DelayPattern.pad_id`, a special id outside the codec vocabulary ``[0, V)``. The
model's heads have :attr:`DelayPattern.vocab_size` outputs but sampling is restricted to the
``V`` codec ids (see :mod:`stemstream.model.sampling`), so a pad can never be emitted as a code
(the reference code could, which deleted frames).

Example (K = 3, T = 2, ``P`` = pad)::

    codes           delayed (S = 4)
    q0: a0 a1       q0: a0 a1 P  P
    q1: b0 b1       q1: P  b0 b1 P
    q2: c0 c1       q2: P  P  c0 c1
"""

from dataclasses import dataclass

import torch

from stemstream.errors import ConfigError

__all__ = ["DelayPattern"]


@dataclass(frozen=True)
class DelayPattern:
    """Delay pattern for ``num_codebooks`` codebooks of ``codebook_size`` codes each.

    Attributes:
        num_codebooks: K, codebooks (RVQ levels) per frame.
        codebook_size: V, codes per codebook; codec ids are ``0 .. V - 1``.
    """

    num_codebooks: int
    codebook_size: int

    def __post_init__(self) -> None:
        if isinstance(self.num_codebooks, bool) or not isinstance(self.num_codebooks, int):
            raise ConfigError(f"num_codebooks must be an int, got {self.num_codebooks!r}")
        if isinstance(self.codebook_size, bool) or not isinstance(self.codebook_size, int):
            raise ConfigError(f"codebook_size must be an int, got {self.codebook_size!r}")
        if self.num_codebooks < 1:
            raise ConfigError(f"num_codebooks must be >= 1, got {self.num_codebooks}")
        if self.codebook_size < 1:
            raise ConfigError(f"codebook_size must be >= 1, got {self.codebook_size}")

    @property
    def pad_id(self) -> int:
        """Special id of an empty cell of the delayed grid (= V, outside the codec vocabulary)."""
        return self.codebook_size

    @property
    def vocab_size(self) -> int:
        """Token ids per codebook including the special pad id (= V + 1): embedding/head size."""
        return self.codebook_size + 1

    @property
    def max_delay(self) -> int:
        """Steps between a frame's first and last codebook (= K - 1)."""
        return self.num_codebooks - 1

    def num_steps(self, num_frames: int) -> int:
        """Sequence steps S needed to hold ``num_frames`` complete frames (= T + K - 1)."""
        _check_nonnegative("num_frames", num_frames)
        return num_frames + self.max_delay

    def step_of(self, frame: int, codebook: int) -> int:
        """Step at which ``codebook`` of ``frame`` is emitted (= frame + codebook)."""
        _check_nonnegative("frame", frame)
        self._check_codebook(codebook)
        return frame + codebook

    def frames_complete_at(self, step: int) -> int:
        """Number of complete frames once step ``step`` (0-based) has been emitted.

        Frame ``t`` completes at step ``t + K - 1``, so after step ``s`` frames
        ``0 .. s - K + 1`` are complete: ``max(0, s - K + 2)``. ``step = -1`` (nothing emitted
        yet) gives 0.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < -1:
            raise ConfigError(f"step must be an int >= -1, got {step!r}")
        return max(0, step - self.num_codebooks + 2)

    def emitted_frame(self, step: int, num_frames: int | None = None) -> torch.Tensor:
        """Which frame each codebook emits at ``step``.

        Args:
            step: Sequence step ``s >= 0``.
            num_frames: Total frames T of a finite sequence; ``None`` for an unbounded stream.

        Returns:
            LongTensor [K]: ``s - q`` for codebook ``q``, or -1 where that codebook emits no
            code at this step (before its first frame, or past frame ``T - 1``).
        """
        _check_nonnegative("step", step)
        frames = step - torch.arange(self.num_codebooks, dtype=torch.long)
        invalid = frames < 0
        if num_frames is not None:
            _check_nonnegative("num_frames", num_frames)
            invalid |= frames >= num_frames
        return frames.masked_fill(invalid, -1)

    def valid_mask(
        self, num_steps: int, num_frames: int | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Where real codes belong in a delayed grid of ``num_steps`` steps.

        Args:
            num_steps: S, steps of the delayed grid.
            num_frames: Frames T it holds. ``None`` means the layout :meth:`apply` produces,
                ``T = max(0, S - K + 1)``; pass a larger T for a stream prefix whose later
                frames are still to come (then only the leading cells are empty).
            device: Device of the returned mask.

        Returns:
            BoolTensor [K, S]: True at ``(q, s)`` iff ``0 <= s - q < T``.
        """
        _check_nonnegative("num_steps", num_steps)
        if num_frames is None:
            num_frames = max(0, num_steps - self.max_delay)
        _check_nonnegative("num_frames", num_frames)
        steps = torch.arange(num_steps, device=device)
        frames = steps[None, :] - torch.arange(self.num_codebooks, device=device)[:, None]
        return (frames >= 0) & (frames < num_frames)  # (K, S)

    def apply(self, codes: torch.Tensor) -> torch.Tensor:
        """Delay codec codes into the step layout.

        Args:
            codes: LongTensor [B, K, T] of codec ids in ``[0, V)``.

        Returns:
            LongTensor [B, K, T + K - 1]; ``out[:, q, t + q] = codes[:, q, t]``, other cells
            are :attr:`pad_id`.

        Raises:
            ConfigError: Wrong rank, dtype or K, or a code outside ``[0, V)``.
        """
        self._check_grid("codes", codes)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ConfigError(
                f"codes must lie in [0, {self.codebook_size}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        batch, num_codebooks, num_frames = codes.shape
        delayed = codes.new_full((batch, num_codebooks, self.num_steps(num_frames)), self.pad_id)
        for q in range(num_codebooks):
            delayed[:, q, q : q + num_frames] = codes[:, q]
        return delayed

    def revert(self, delayed: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply`, keeping only the frames complete within the given steps.

        Args:
            delayed: LongTensor [B, K, S] in the delayed layout (a full sequence or a prefix).

        Returns:
            LongTensor [B, K, T] with ``T = max(0, S - K + 1)`` (see :meth:`frames_complete_at`).

        Raises:
            ConfigError: Wrong rank, dtype or K, or a cell that should hold a code of a
                complete frame holds anything outside ``[0, V)`` (e.g. the pad id).
        """
        self._check_grid("delayed", delayed)
        num_frames = max(0, delayed.shape[-1] - self.max_delay)
        codes = torch.stack(
            [delayed[:, q, q : q + num_frames] for q in range(self.num_codebooks)], dim=1
        )  # (B, K, T)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ConfigError(
                f"delayed sequence holds ids outside [0, {self.codebook_size}) at code "
                f"positions (range [{int(codes.min())}, {int(codes.max())}]); "
                "a special token was emitted where a code belongs"
            )
        return codes

    def _check_codebook(self, codebook: int) -> None:
        if isinstance(codebook, bool) or not isinstance(codebook, int):
            raise ConfigError(f"codebook must be an int, got {codebook!r}")
        if not 0 <= codebook < self.num_codebooks:
            raise ConfigError(f"codebook must be in [0, {self.num_codebooks}), got {codebook}")

    def _check_grid(self, name: str, grid: torch.Tensor) -> None:
        if not isinstance(grid, torch.Tensor):
            raise ConfigError(f"{name} must be a torch.Tensor, got {type(grid).__name__}")
        if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
            raise ConfigError(f"{name} must be an integer tensor, got dtype {grid.dtype}")
        if grid.dim() != 3:
            raise ConfigError(f"{name} must have shape [B, K, T], got {tuple(grid.shape)}")
        if grid.shape[1] != self.num_codebooks:
            raise ConfigError(
                f"{name} has {grid.shape[1]} codebooks, the pattern expects {self.num_codebooks}"
            )


def _check_nonnegative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
