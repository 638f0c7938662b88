"""Input guidance settings (classifier-free guidance on the input stream of a streaming
decoder): one weight ``w`` for every codebook, or one per codebook. Parsing, checking and
writing them needs no torch, so front ends and configs use this module; the logits are
combined in :func:`stemstream.model.sampling.guided_logits`."""

import math
from collections.abc import Sequence

from stemstream.errors import ConfigError

Guidance = float | tuple[float, ...]
"""Input guidance ``w``: one number for every codebook, or one per codebook (coarse first)."""


def check_guidance(guidance: float | Sequence[float]) -> None:
    """A :class:`ConfigError` unless ``guidance`` is a finite number ``>= 0``, or a non-empty
    sequence of them (one per codebook)."""
    parse_guidance(guidance)


def parse_guidance(guidance: object) -> Guidance:
    """Input guidance as :data:`Guidance`: a number, or a sequence or comma-separated string of
    numbers (one per codebook; a single one is that number).

    Raises:
        ConfigError: not a number, a negative or non-finite one, or an empty sequence.
    """
    if isinstance(guidance, str):
        try:
            guidance = [float(w) for w in guidance.split(",")]
        except ValueError:
            raise ConfigError(f"guidance must be a number or one number per codebook (e.g. "
                              f"2 or 6,2,2,2), got {guidance!r}") from None
    if isinstance(guidance, Sequence):
        values = tuple(_check_weight(w) for w in guidance)
        if not values:
            raise ConfigError("guidance needs at least one number")
        return values[0] if len(values) == 1 else values
    return _check_weight(guidance)


def _check_weight(w: object) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise ConfigError(f"guidance must be a number, got {w!r}")
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"guidance must be finite and >= 0, got {w}")
    return float(w)


def is_guided(guidance: Guidance) -> bool:
    """Whether sampling with ``guidance`` needs the unconditional logits (some ``w != 1``)."""
    return any(w != 1 for w in _weights(guidance))


def format_guidance(guidance: Guidance, sep: str = "/") -> str:
    """As a person writes it: ``2``, or ``6/2/2/2`` for one weight per codebook (``sep=","``:
    as ``--guidance`` and ``,guidance=`` take it)."""
    return sep.join(f"{w:g}" for w in _weights(guidance))


def guidance_json(guidance: Guidance) -> float | list[float]:
    """For JSON and checkpoint metadata: a number, or a list of one per codebook."""
    return list(guidance) if isinstance(guidance, tuple) else float(guidance)


def check_codebooks(guidance: Guidance, num_codebooks: int) -> None:
    """A :class:`ConfigError` unless ``guidance`` is one number or one per codebook."""
    if isinstance(guidance, tuple) and len(guidance) != num_codebooks:
        raise ConfigError(f"input guidance {format_guidance(guidance)} has {len(guidance)} "
                          f"weights for a model of {num_codebooks} codebooks: give one, or "
                          "one per codebook")


def _weights(guidance: Guidance) -> tuple[float, ...]:
    return guidance if isinstance(guidance, tuple) else (guidance,)
