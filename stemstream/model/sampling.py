"""Token sampling: per-codebook top-k/temperature for decoders, confidence and mask schedule for
StemGen-style iterative masked decoding (appendix A.5).

Sampling is restricted to codec ids ``[0, V)``: the heads may have extra outputs for special
tokens (``V' > V``, e.g. the delay pattern's pad), and those are never drawn, whatever their
logits (the reference code could emit them, which deleted frames).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance, check_guidance, is_guided, parse_guidance

__all__ = [
    "SamplingConfig",
    "check_guidance",
    "cosine_mask_ratio",
    "guided_logits",
    "cosine_schedule",
    "masked_logits",
    "num_to_mask",
    "sample_tokens",
    "stemgen_confidence",
]

# Uniform draws are clamped away from 0 so the Gumbel noise -log(-log(u)) stays finite.
_MIN_UNIFORM = 1e-20


@dataclass(frozen=True)
class SamplingConfig:
    """Decoder sampling settings; defaults are the paper's (A.5): temperature 1.0, top-k 200.

    Attributes:
        temperature: Softmax temperature; 0 means greedy (argmax).
        top_k: Number of most likely codec ids kept per codebook (clamped to V).
        guidance: Input guidance ``w`` (classifier-free guidance on the input stream, for the
            streaming decoder): the logits sampled are ``u + w (c - u)``, ``c`` with the
            input heard and ``u`` with every position hearing "no input". 1 is plain
            sampling; above 1 pushes the output towards what the input predicts. It runs the
            model twice per position (one batch of ``2B``). One ``w`` per codebook (a
            tuple, coarse codebook first) guides each codebook by its own weight, e.g.
            ``(6, 2, 2, 2)``: the coarse codebook carries the notes and their timing, the
            finer ones codec detail that strong guidance turns into noise.
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    guidance: Guidance = 1.0

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        _check_top_k(self.top_k)
        if isinstance(self.guidance, str):  # text is parsed by front ends (parse_guidance)
            raise ConfigError(f"guidance must be a number or one per codebook, got "
                              f"{self.guidance!r}")
        object.__setattr__(self, "guidance", parse_guidance(self.guidance))

    @property
    def guided(self) -> bool:
        """Whether sampling needs the unconditional logits (some ``w != 1``)."""
        return is_guided(self.guidance)

    @property
    def greedy(self) -> bool:
        """Whether sampling reduces to a deterministic argmax."""
        return self.temperature == 0

    def sample(
        self,
        logits: torch.Tensor,
        *,
        valid_vocab: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:func:`sample_tokens` with these settings; logits [B, K, V'] -> LongTensor [B, K]."""
        return sample_tokens(
            logits, self.temperature, self.top_k, generator, valid_vocab=valid_vocab
        )


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor,
                  guidance: float | Sequence[float]) -> torch.Tensor:
    """``u + w (c - u)`` in float32: classifier-free guidance of ``conditional`` logits away
    from ``unconditional`` ones (same shape ``[..., K, V]``), ``w`` = ``guidance``: one
    number, or one per codebook ``K``."""
    if not isinstance(guidance, int | float):
        if len(guidance) != conditional.shape[-2]:
            raise ConfigError(f"{len(guidance)} guidance weights for "
                              f"{conditional.shape[-2]} codebooks")
        return torch.stack([guided_logits(conditional[..., q, :], unconditional[..., q, :], w)
                            for q, w in enumerate(guidance)], dim=-2)
    if guidance == 1:  # exactly the conditional logits, not u + (c - u) rounded
        return conditional.float()
    u = unconditional.float()
    return u + guidance * (conditional.float() - u)


def masked_logits(logits: torch.Tensor, valid_vocab: int) -> torch.Tensor:
    """Set the logits of special ids (``>= valid_vocab``) to -inf.

    Args:
        logits: FloatTensor [..., V'].
        valid_vocab: V, the number of codec ids; ``1 <= V <= V'``.

    Returns:
        FloatTensor [..., V'], a copy with ``[..., V:]`` = -inf.
    """
    _check_logits(logits, valid_vocab, min_dim=1)
    out = logits.clone()
    out[..., valid_vocab:] = float("-inf")
    return out


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
    generator: torch.Generator | None = None,
    *,
    valid_vocab: int,
) -> torch.Tensor:
    """Sample one codec id per codebook with top-k and temperature.

    Special ids ``>= valid_vocab`` are removed before top-k and softmax, so they are never
    returned. The softmax runs in float32 whatever the logits' dtype.

    Args:
        logits: FloatTensor [B, K, V'] (V' >= V).
        temperature: Softmax temperature >= 0; 0 gives the argmax (deterministic).
        top_k: Candidates kept per codebook, >= 1; values above V mean all V codec ids.
        generator: Random generator (on the logits' device) for reproducible draws.
        valid_vocab: V, the number of codec ids.

    Returns:
        LongTensor [B, K] of ids in ``[0, V)``.

    Raises:
        ConfigError: Bad shape or dtype, ``valid_vocab`` outside ``[1, V']``, negative
            temperature or ``top_k < 1``.
    """
    candidates = _candidates(logits, temperature, top_k, valid_vocab)
    if temperature == 0:
        return candidates
    top_ids, probs = candidates
    batch, num_codebooks, k = probs.shape
    choice = torch.multinomial(probs.reshape(-1, k), 1, generator=generator)  # (B*K, 1)
    return top_ids.gather(-1, choice.reshape(batch, num_codebooks, 1)).squeeze(-1)


def _candidates(logits: torch.Tensor, temperature: float, top_k: int, valid_vocab: int):
    """The validated first half of sampling ``[B, K, V']`` logits: the argmax ``[B, K]``
    when ``temperature == 0``, else the top-k ids and their softmax probabilities
    (``[B, K, k]`` each)."""
    _check_logits(logits, valid_vocab, min_dim=3, max_dim=3)
    _check_temperature(temperature)
    _check_top_k(top_k)
    # Slicing is masking to -inf, made exact: even if every codec logit is -inf no special id
    # can be chosen.
    codec_logits = logits[..., :valid_vocab].float()  # (B, K, V)
    if temperature == 0:
        return codec_logits.argmax(dim=-1)
    top_logits, top_ids = codec_logits.topk(min(top_k, valid_vocab), dim=-1)  # (B, K, k)
    return top_ids, torch.softmax(top_logits / temperature, dim=-1)


def sample_streams(
    logits: Sequence[torch.Tensor],
    settings: Sequence[tuple[float, int]],
    generators: Sequence[torch.Generator | None],
    *,
    valid_vocab: int,
) -> list[torch.Tensor]:
    """:func:`sample_tokens` of many streams (an engine's sessions), each ``logits[i]``
    ``[1, K, V']`` with its own ``(temperature, top_k)`` and generator: one top-k and softmax
    over all streams that share their settings, then each stream's draw from its own
    generator, so every stream gets exactly the tokens it gets alone. Returns ``[1, K]`` each."""
    out: list[torch.Tensor | None] = [None] * len(logits)
    groups: dict[tuple[float, int], list[int]] = {}
    for i, setting in enumerate(settings):
        groups.setdefault(setting, []).append(i)
    for (temperature, top_k), members in groups.items():
        candidates = _candidates(torch.cat([logits[i] for i in members]), temperature, top_k,
                                 valid_vocab)
        if temperature == 0:
            for i, tokens in zip(members, candidates, strict=True):
                out[i] = tokens[None]
            continue
        top_ids, probs = candidates  # (n, K, k) each
        for row, i in enumerate(members):
            choice = torch.multinomial(probs[row], 1, generator=generators[i])  # (K, 1)
            out[i] = top_ids[row].gather(-1, choice).squeeze(-1)[None]
    return out  # type: ignore[return-value]


def stemgen_confidence(
    log_probs: torch.Tensor,
    step: int,
    num_steps: int,
    temp_start: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Confidence of sampled tokens for iterative masked decoding (appendix A.5, eq. 4).

    ``conf = log p + temp * g`` with ``g ~ Gumbel(0, 1)`` i.i.d. and ``temp`` annealed linearly
    to 0 over the iterations, VampNet-style: ``temp = temp_start * (1 - (step + 1) / num_steps)``,
    so the last iteration (``step = num_steps - 1``) ranks by ``log p`` alone. The paper uses
    ``temp_start`` = [8, 8, 4, 4] and [128, 64, 32, 32] steps for RVQ levels 1..4. Low
    confidence tokens are re-masked.

    The noise is ``-log(-log(u))`` with ``u = torch.rand(log_probs.shape, generator=generator)``
    (float32, on the log-probs' device) clamped to at least 1e-20; one draw per call.

    Args:
        log_probs: FloatTensor [B, T], log-probability of each chosen token.
        step: Iteration index, ``0 <= step < num_steps``.
        num_steps: Iterations for this RVQ level, >= 1.
        temp_start: Maximum noise temperature, >= 0.
        generator: Random generator for reproducible noise.

    Returns:
        FloatTensor [B, T] (log-probs' dtype).
    """
    if not isinstance(log_probs, torch.Tensor) or not log_probs.dtype.is_floating_point:
        raise ConfigError("log_probs must be a floating-point torch.Tensor")
    _check_step(step, num_steps)
    if not math.isfinite(temp_start) or temp_start < 0:
        raise ConfigError(f"temp_start must be finite and >= 0, got {temp_start}")
    temp = temp_start * (1.0 - (step + 1) / num_steps)
    uniform = torch.rand(
        log_probs.shape, generator=generator, device=log_probs.device, dtype=torch.float32
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_min(_MIN_UNIFORM)))
    return log_probs + (temp * gumbel).to(log_probs.dtype)


def cosine_mask_ratio(progress: float) -> float:
    """MaskGIT cosine schedule ``gamma(r) = cos(pi / 2 * r)``: fraction masked at progress r.

    Also the masking ratio for training with ``r ~ U[0, 1)``. ``gamma(0) = 1``, ``gamma(1) = 0``.
    """
    if not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress must be in [0, 1], got {progress}")
    if progress == 1.0:
        return 0.0  # cos(pi / 2) is 6e-17 in floating point
    return math.cos(math.pi / 2 * progress)


def cosine_schedule(step: int, num_steps: int) -> float:
    """Fraction of tokens still masked after iteration ``step``: ``cos(pi/2 * (step+1)/n)``.

    Before iteration 0 everything is masked (fraction 1); after the last iteration
    (``step = num_steps - 1``) nothing is (exactly 0.0).
    """
    _check_step(step, num_steps)
    return cosine_mask_ratio((step + 1) / num_steps)


def num_to_mask(num_tokens: int, step: int, num_steps: int, num_masked: int | None = None) -> int:
    """How many tokens stay masked after iteration ``step`` (VampNet/MaskGIT rule).

    ``floor(cosine_schedule(step, num_steps) * num_tokens)``, then, except at the last
    iteration (which unmasks everything: 0), clamped to ``[1, num_masked - 1]`` so that each
    iteration unmasks at least one token and leaves at least one for the next (when
    ``num_masked <= 1`` the result is ``num_masked``).

    Args:
        num_tokens: Tokens masked at the start of decoding this level.
        step: Iteration index, ``0 <= step < num_steps``.
        num_steps: Iterations for this level, >= 1.
        num_masked: Tokens masked before this iteration; ``None`` means ``num_tokens``.
    """
    _check_step(step, num_steps)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise ConfigError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
    if num_masked is None:
        num_masked = num_tokens
    if not 0 <= num_masked <= num_tokens:
        raise ConfigError(f"num_masked must be in [0, {num_tokens}], got {num_masked}")
    if step == num_steps - 1:
        return 0
    count = math.floor(cosine_schedule(step, num_steps) * num_tokens)
    return min(max(1, min(num_masked - 1, count)), num_masked)


def _check_logits(
    logits: torch.Tensor, valid_vocab: int, min_dim: int, max_dim: int | None = None
) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise ConfigError("logits must be a floating-point torch.Tensor")
    if logits.dim() < min_dim or (max_dim is not None and logits.dim() > max_dim):
        expected = "[B, K, V']" if max_dim == 3 else "[..., V']"
        raise ConfigError(f"logits must have shape {expected}, got {tuple(logits.shape)}")
    if isinstance(valid_vocab, bool) or not isinstance(valid_vocab, int):
        raise ConfigError(f"valid_vocab must be an int, got {valid_vocab!r}")
    if not 1 <= valid_vocab <= logits.shape[-1]:
        raise ConfigError(
            f"valid_vocab must be in [1, {logits.shape[-1]}] (the logits' last dim), "
            f"got {valid_vocab}"
        )


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ConfigError(f"temperature must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be finite and >= 0, got {temperature}")


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an int >= 1, got {top_k!r}")


def _check_step(step: int, num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
        raise ConfigError(f"step must be an int in [0, {num_steps}), got {step!r}")
