"""What a model hears for a batch of dumped windows: the codec embedding of the input codes,
then the input features the model names, picked from those the dump stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stemstream.data.tokens import DumpError, TokenBatch
from stemstream.features import feature_channels


class BatchInputs:
    """``batch -> float32 [B, D_in, T_in]`` (latents, then features), see the module docstring.

    Args:
        embed: input codes ``[B, K, T_in]`` -> latents ``[B, D_latent, T_in]``.
        wanted: the features the model hears (its config's ``input_features``; may be empty).
        stored: the features the dump stores, in its order.
        where: the dump, for the error message.
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], wanted: Sequence[str],
                 stored: Sequence[str], where: str):
        self.embed = embed
        self.index = None
        if wanted:
            missing = [name for name in wanted if name not in stored]
            if missing:
                raise DumpError(
                    f"{where}: the model hears input features {', '.join(missing)} the dump "
                    f"does not store; add them with `stemstream data dump-features {where}`")
            self.index = torch.from_numpy(feature_channels(wanted, stored))

    def __call__(self, batch: TokenBatch, device: torch.device | str) -> torch.Tensor:
        with torch.no_grad():
            latents = self.embed(batch.input_codes.to(device)).float()
        if self.index is None:
            return latents
        features = batch.input_features[:, self.index].to(device)
        return torch.cat([latents, features[..., : latents.shape[-1]]], dim=1)
