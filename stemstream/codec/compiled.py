"""The :class:`~stemstream.codec.framecodec.FrameCodec`'s streaming trunks, one frame per
call, compiled ahead of time (issue 17; machinery in :mod:`stemstream.aot`).

A streaming codec step is ~20 small matrix products and ~150 other operations per frame and
direction; on a slow CPU the per-operation overhead costs as much as the arithmetic. The
compiled route captures, for one frame,

* encoding: the trunk from the STFT features to the latent plus the residual quantiser
  (features in, codes and the convolution histories out), and
* decoding: the embedding of the codes plus the trunk to log-magnitudes and phase
  deviations (codes in, spectra and histories out),

while the FFTs, the phase integration and the overlap-add stay eager (a handful of calls).
Blocks of several frames run frame by frame: the trunks are causal, so the result is the
frame-by-frame eager one.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from stemstream.aot import (
    RouteError,
    RouteInfo,
    check_route,
    compile_package,
    digest,
    load_or_compile,
)
from stemstream.codec import framecodec

EXAMPLE_BATCH = 2
MAX_BATCH = 4096


class EncodeFrame(nn.Module):
    """``feats [B, 3F, 1]``, ``histories [blocks, B, C, kernel-1]`` -> ``codes [B, K', 1]``
    and the new histories."""

    def __init__(self, codec: framecodec.FrameCodec, num_codebooks: int) -> None:
        super().__init__()
        self.codec, self.num_codebooks = codec, num_codebooks

    def forward(self, feats: torch.Tensor, histories: torch.Tensor):
        latent, new = self.codec._encoder_trunk(feats, list(histories.unbind(0)))
        return self.codec.quantizer.encode(latent, self.num_codebooks), torch.stack(new)


class DecodeFrame(nn.Module):
    """``codes [B, K', 1]``, ``histories [blocks, B, C, kernel-1]`` -> log-magnitudes and
    phase deviations ``[B, F, 1]`` each and the new histories."""

    def __init__(self, codec: framecodec.FrameCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, codes: torch.Tensor, histories: torch.Tensor):
        latent = self.codec.quantizer.embed(codes)
        log_mag, deviation, new = self.codec._decoder_trunk(latent, list(histories.unbind(0)))
        return log_mag, deviation, torch.stack(new)


class CompiledTrunks:
    """The two compiled frame steps of one codec for ``num_codebooks`` levels."""

    def __init__(self, encode, decode, num_codebooks: int) -> None:
        self.encode, self.decode, self.num_codebooks = encode, decode, num_codebooks


def _examples(codec: framecodec.FrameCodec, num_codebooks: int, blocks: int, batch: int):
    cfg = codec.config
    histories = torch.zeros(blocks, batch, cfg.channels, cfg.kernel_size - 1)
    return histories, torch.zeros(batch, num_codebooks, 1, dtype=torch.long)


def _build_encoder(codec, num_codebooks: int, package) -> None:
    from torch.export import Dim

    cfg = codec.config
    batch = Dim("batch", min=1, max=MAX_BATCH)
    histories, _ = _examples(codec, num_codebooks, cfg.enc_blocks, EXAMPLE_BATCH)
    feats = torch.zeros(EXAMPLE_BATCH, 3 * (cfg.enc_n_fft // 2 + 1), 1)
    compile_package(EncodeFrame(codec, num_codebooks), (feats, histories),
                    ({0: batch}, {1: batch}), package)


def _build_decoder(codec, num_codebooks: int, package) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    histories, codes = _examples(codec, num_codebooks, codec.config.dec_blocks, EXAMPLE_BATCH)
    compile_package(DecodeFrame(codec), (codes, histories), ({0: batch}, {1: batch}), package)


def accelerate_codec(codec: nn.Module, num_codebooks: int, route: str = "auto",
                     quiet: bool = False) -> RouteInfo:
    """Run ``codec``'s streaming encoder and decoder (for ``num_codebooks`` levels) on
    ``route``: sets ``codec.trunk_route`` (``None`` = eager). Codecs other than
    :class:`~stemstream.codec.framecodec.FrameCodec` stay eager.

    Raises:
        RouteError: ``compiled`` asked for where it cannot run.
    """
    check_route(route)
    if isinstance(codec, framecodec.FrameCodec):
        codec.trunk_route = None
    if route == "eager":
        return RouteInfo("eager")
    try:
        if not isinstance(codec, framecodec.FrameCodec):
            raise RouteError(f"the compiled route covers the FrameCodec, not "
                             f"{type(codec).__name__}")
        key = digest([sys.modules[__name__], framecodec], {"config": codec.config_dict(),
                                              "num_codebooks": num_codebooks}, codec)
        encode, enc_info = load_or_compile(
            "codec encoder", key, lambda path: _build_encoder(codec, num_codebooks, path), quiet
        )
        decode, dec_info = load_or_compile(
            "codec decoder", key, lambda path: _build_decoder(codec, num_codebooks, path), quiet
        )
    except RouteError as error:
        if route == "compiled":
            raise
        return RouteInfo("eager", note=str(error))
    codec.trunk_route = CompiledTrunks(encode, decode, num_codebooks)
    return RouteInfo("compiled", enc_info.package, enc_info.compile_s + dec_info.compile_s,
                     enc_info.load_s + dec_info.load_s)
