"""Input reliance: how much a streaming decoder uses its input, in nats.

Reliance is the cross-entropy of the target under another track's input minus under the true
input, on the same windows with the same target history. A model that accompanies its input
has clearly positive reliance; ~0 means it predicts the stem from its own past alone. Three
views (the listening issue's measures):

* ``all``: over every token.
* ``onsets``: over the tokens of frames 0-2 after a note onset of the target (where the input
  carries most of what can be predicted; most other tokens are codec detail no input predicts).
* ``hidden``: with the whole target history hidden (the instrument token stays): what the model
  takes from the input alone.

With input guidance ``w`` (:class:`~stemstream.model.sampling.SamplingConfig`) the same
measures are taken on the logits a guided sampler draws from, ``u + w (c - u)`` (``u``: the
model hearing no input), so they say how much *generation* follows the input.

The trainer logs these on validation (``reliance/*``) so a run that stops listening shows within
minutes; ``scripts/input_reliance.py`` reports them for any checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from stemstream.guidance import Guidance, is_guided
from stemstream.model.sampling import guided_logits

ONSET_FRAMES = 3  # frames 0..2 after a note onset


def onset_window(onsets: torch.Tensor, span: int = ONSET_FRAMES) -> torch.Tensor:
    """bool ``[B, T]``: frames at most ``span - 1`` frames after an onset."""
    padded = F.pad(onsets.float()[:, None], (span - 1, 0))
    return F.max_pool1d(padded, span, stride=1)[:, 0] > 0


def token_onsets(window: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """bool ``[B, K, S]``: which tokens belong to a frame of the onset ``window`` (``[B, T]``,
    :func:`onset_window`), for the tokens' frames ``frame`` (``[K, S]``, :func:`token_frames`);
    tokens outside ``0 <= frame < T`` (delay pads) belong to none."""
    inside = (frame >= 0) & (frame < window.shape[1])
    return window[:, frame.clamp(0, window.shape[1] - 1)] & inside[None]


def token_losses(out, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy ``[B, K, S]`` of a teacher-forced output, whether each token is
    a code (not a delay pad), and each token's frame ``s - q`` (``[K, S]``)."""
    logits, targets = out.logits, out.targets  # [B, S, K, V], [B, K, S]
    losses = F.cross_entropy(
        logits.float().permute(0, 3, 2, 1), targets, ignore_index=pad_id, reduction="none"
    )
    return losses, targets != pad_id, token_frames(targets)


def token_frames(targets: torch.Tensor) -> torch.Tensor:
    """Each token's frame ``s - q`` (``[K, S]``) for delayed tokens ``[B, K, S]``."""
    q = torch.arange(targets.shape[1], device=targets.device)[:, None]
    s = torch.arange(targets.shape[2], device=targets.device)[None]
    return s - q


@dataclass
class _Sums:
    loss: dict[str, float] = field(default_factory=dict)
    count: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, losses: torch.Tensor, mask: torch.Tensor) -> None:
        self.loss[key] = self.loss.get(key, 0.0) + float(losses[mask].sum())
        self.count[key] = self.count.get(key, 0.0) + float(mask.sum())

    def mean(self, key: str) -> float:
        return self.loss[key] / max(self.count[key], 1.0)


@torch.no_grad()
def measure_reliance(
    model: torch.nn.Module,
    inputs: Callable[[Any, torch.device], torch.Tensor],
    batches: Sequence,
    others: Sequence,
    guidance: Guidance = 1.0,
) -> dict[str, float]:
    """Validation loss and reliance of a streaming decoder (module docstring).

    Args:
        model: a :class:`~stemstream.model.streaming.StreamingDecoder` (run in eval mode).
        inputs: ``(batch, device)`` -> the model's input ``[B, D_in, T_in]`` (a
            :class:`~stemstream.train.inputs.BatchInputs`).
        batches: :class:`~stemstream.data.tokens.TokenBatch` es with the true input.
        others: batches of the same shapes whose inputs come from other tracks.
        guidance: measure the guided logits (module docstring), one ``w`` or one per
            codebook; 1 = the model's own.

    Returns:
        ``loss/valid`` (true input), ``loss/valid_other_input``, ``reliance/all``,
        ``reliance/hidden`` and, when the batches carry onsets, ``reliance/onsets`` and
        ``loss/valid_onsets``; ``reliance/all_q{q}`` (and ``reliance/onsets_q{q}``) per codebook
        ``q``, whose mean over codebooks, weighted by token counts, is the overall figure.
    """
    was_training = model.training
    model.eval()
    pad_id = model.delay.pad_id
    sums = _Sums()
    device = next(model.parameters()).device
    for batch, other in zip(batches, others, strict=True):
        target = batch.target_codes.to(device)
        inst = batch.inst_class.to(device)
        onsets = None
        if batch.onsets is not None:
            onsets = onset_window(batch.onsets.to(device))
        deaf = {}  # the unconditional logits do not depend on the input
        for name, source in (("true", batch), ("other", other)):
            latents = inputs(source, device)
            for hidden in (False, True):
                out = model(latents, target, inst, hide_history=hidden)
                if is_guided(guidance):
                    if hidden not in deaf:
                        deaf[hidden] = model(latents, target, inst, hide_history=hidden,
                                             hide_input=True).logits
                    out = out._replace(logits=guided_logits(out.logits, deaf[hidden],
                                                            guidance))
                losses, valid, frame = token_losses(out, pad_id)
                key = f"{name}{'_hidden' if hidden else ''}"
                sums.add(key, losses, valid)
                if hidden:
                    continue
                at = None
                if onsets is not None:
                    at = valid & token_onsets(onsets, frame)
                    sums.add(f"{name}_onsets", losses, at)
                for q in range(losses.shape[1]):
                    sums.add(f"{name}_q{q}", losses[:, q], valid[:, q])
                    if at is not None:
                        sums.add(f"{name}_onsets_q{q}", losses[:, q], at[:, q])
    model.train(was_training)
    result = {
        "loss/valid": sums.mean("true"),
        "loss/valid_other_input": sums.mean("other"),
        "reliance/all": sums.mean("other") - sums.mean("true"),
        "reliance/hidden": sums.mean("other_hidden") - sums.mean("true_hidden"),
    }
    has_onsets = "true_onsets" in sums.loss and sums.count["true_onsets"] > 0
    if has_onsets:
        result["loss/valid_onsets"] = sums.mean("true_onsets")
        result["reliance/onsets"] = sums.mean("other_onsets") - sums.mean("true_onsets")
    for q in range(model.config.num_codebooks):
        result[f"reliance/all_q{q}"] = sums.mean(f"other_q{q}") - sums.mean(f"true_q{q}")
        if has_onsets:
            result[f"reliance/onsets_q{q}"] = (sums.mean(f"other_onsets_q{q}")
                                               - sums.mean(f"true_onsets_q{q}"))
    return result
