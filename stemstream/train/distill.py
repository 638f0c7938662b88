"""Guidance distillation: a streaming decoder learns to give, in one pass, the distribution a
teacher samples from under input guidance (``distill_from`` in a training config).

A model sampled with input guidance ``w`` draws from ``u + w (c - u)``, where ``c`` are its
logits hearing the input and ``u`` hearing "no input" (:mod:`stemstream.model.sampling`).
That costs two passes per position, and the listening it buys belongs to the sampler, not to
the model: the model's own logits rely on the input far less. A student trained to match the
guided logits (forward KL, teacher-forced on the same windows with the true history) samples
that distribution with one pass, and its own logits carry as much of the guided reliance as
it learns (measured in ``models/streaming-*-distill``: most over all frames, less at onsets).

The guidance may differ per codebook (``distill_guidance: [4, 1, 1, 1]``): the coarse codebook
carries the notes and their timing, the finer ones codec detail that guidance turns into
noise (``models/streaming-listen-distill``). ``distill_onset_weight`` counts the KL on the
tokens of frames right after a target note onset (:func:`~stemstream.train.reliance.onset_window`)
that many times, where the students fall furthest behind their teachers.
``distill_mismatch`` lets a share of each batch hear another row's input, teacher and student
alike: teacher-forced on true pairs only, a student learns the guided logits where input and
history agree and never what the teacher does where they disagree, which is where a model
that listens differs from one that continues its stem (:func:`mismatch_inputs`).

The teacher must decide the same tokens from the same input: same ``t_f``, ``k``, codebooks,
codebook size and input channels (features and beat lead included). Its weights are frozen and
it runs in eval mode, so a resumed run sees exactly the targets an uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stemstream.codec.base import describe_identity, same_tokens
from stemstream.errors import ConfigError
from stemstream.model.sampling import guided_logits

MATCHED_FIELDS = ("future_frames", "chunk_frames", "num_codebooks", "codebook_size",
                  "input_dim", "input_features", "beat_lead_seconds")
"""Config fields a teacher and its student must share: they fix which tokens each position
decides and what it hears."""


class GuidedTeacher:
    """A frozen streaming decoder whose guided logits a student learns.

    Args:
        path: the teacher's model checkpoint (exported or training).
        guidance: ``w``, or one ``w`` per codebook; ``None`` = the guidance stored in the
            checkpoint at export.
        student: the student's :class:`~stemstream.model.streaming.StreamingDecoderConfig`.
        codec: the identity of the codec the student trains on.
        device: where the teacher runs.

    Raises:
        CheckpointError: not a streaming model checkpoint.
        ConfigError: another codec's tokens, a field of :data:`MATCHED_FIELDS` differs, or
            not one guidance per codebook.
    """

    def __init__(self, path: str | Path, guidance: float | Sequence[float] | None, student: Any,
                 codec: dict[str, Any], device: torch.device | str):
        from stemstream.model.checkpoints import load_model

        loaded = load_model(path, family="streaming")
        if not same_tokens(loaded.codec, codec):
            raise ConfigError(
                f"distill_from {path} was trained on codec {describe_identity(loaded.codec)}, "
                f"the student on {describe_identity(codec)} (other tokens)")
        for name in MATCHED_FIELDS:
            theirs, ours = getattr(loaded.config, name), getattr(student, name)
            if theirs != ours:
                raise ConfigError(f"distill_from {path} has {name} = {theirs!r}, the student "
                                  f"{ours!r}: a teacher must decide the same tokens from the "
                                  "same input")
        if guidance is None:
            guidance = loaded.guidance
        if isinstance(guidance, int | float):
            guidance = (float(guidance),) * student.num_codebooks
        if len(guidance) != student.num_codebooks:
            raise ConfigError(f"distill_guidance has {len(guidance)} values for "
                              f"{student.num_codebooks} codebooks: give one, or one per codebook")
        self.guidance: tuple[float, ...] = tuple(float(w) for w in guidance)
        self.model = loaded.model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, latents: torch.Tensor, target_codes: torch.Tensor,
               inst: torch.Tensor) -> torch.Tensor:
        """The guided logits ``[B, L, K, V]`` (float32) the teacher samples from for these
        teacher-forced windows (same arguments as the decoder's ``forward``)."""
        heard = self.model(latents, target_codes, inst).logits
        if all(w == 1 for w in self.guidance):
            return heard.float()
        deaf = self.model(latents, target_codes, inst, hide_input=True).logits
        return guided_logits(heard, deaf, self.guidance)

    def describe(self) -> str:
        """The guidance, as a person would write it: ``4`` or ``4/1/1/1`` per codebook."""
        if len(set(self.guidance)) == 1:
            return f"{self.guidance[0]:g}"
        return "/".join(f"{w:g}" for w in self.guidance)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                 pad_id: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``KL(teacher || student)`` in nats over the tokens that are codes.

    Args:
        student: logits ``[B, L, K, V]``.
        teacher: logits of the same shape (no gradient flows into them).
        targets: the true tokens ``[B, K, L]``; delay pads (``pad_id``) are left out, as in
            the cross-entropy.
        weights: ``[B, K, L]``, how much each token counts (a weighted mean); ``None``: alike.
    """
    per_token = F.kl_div(F.log_softmax(student.float(), dim=-1),
                         F.log_softmax(teacher.detach().float(), dim=-1),
                         reduction="none", log_target=True).sum(-1)  # [B, L, K]
    valid = targets.transpose(1, 2) != pad_id
    if weights is None:
        return per_token[valid].mean()
    weights = weights.transpose(1, 2).float() * valid
    return (per_token * weights).sum() / weights.sum().clamp_min(1e-12)


def mismatch_inputs(latents: torch.Tensor, share: float) -> torch.Tensor:
    """``latents`` ``[B, ...]`` with its first ``round(share * B)`` rows (at most ``B - 1``)
    hearing another row's input: row ``i`` gets row ``i - 1``'s (row 0 the last row's), so
    each such row hears a window other than its own. Training rows are drawn at random, so
    taking the first ones biases nothing."""
    count = min(round(share * latents.shape[0]), latents.shape[0] - 1)
    if count <= 0:
        return latents
    mixed = latents.clone()
    mixed[:count] = latents.roll(1, dims=0)[:count]
    return mixed
