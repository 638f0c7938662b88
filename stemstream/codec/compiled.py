"""The :class:`~stemstream.codec.framecodec.FrameCodec`'s streaming trunks, a block of frames
per call, captured whole and run on ONNX Runtime (route ``onnx``, the fastest measured: 0.5 ms to
encode and 0.8 ms to decode a frame against 4.4 and 4.0 eager on a 2-core CPU) or compiled
with AOTInductor (route ``compiled``) (issue 17; machinery in :mod:`stemstream.aot`).

A streaming codec step is ~20 small matrix products and ~150 other operations per frame and
direction; on a slow CPU the per-operation overhead costs as much as the arithmetic. The
compiled route captures, for a block of ``1..ROUTE_MAX_FRAMES`` frames,

* encoding: the trunk from the STFT features to the latent plus the residual quantiser
  (features in, codes and the convolution histories out), and
* decoding: the embedding of the codes plus the trunk to log-magnitudes and phase
  deviations (codes in, spectra and histories out),

while the FFTs, the phase integration and the overlap-add stay eager (a handful of calls).
A block of several frames (``SessionConfig.codec_block``) is one call, not one per frame: the
trunks are causal, so its result is the frame-by-frame one (within float rounding: the matrix
products see several columns at once).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from stemstream.aot import (
    OnnxModule,
    RouteError,
    RouteInfo,
    check_route,
    compile_package,
    digest,
    export_onnx,
    load_or_compile,
    onnx_version,
)
from stemstream.codec import framecodec

EXAMPLE_BATCH = 2
EXAMPLE_FRAMES = 2
MAX_BATCH = 4096


class EncodeFrame(nn.Module):
    """``feats [B, 3F, T]``, ``histories [blocks, B, C, kernel-1]`` -> ``codes [B, K', T]``
    and the new histories."""

    def __init__(self, codec: framecodec.FrameCodec, num_codebooks: int) -> None:
        super().__init__()
        self.codec, self.num_codebooks = codec, num_codebooks

    def forward(self, feats: torch.Tensor, histories: torch.Tensor):
        latent, new = self.codec._encoder_trunk(feats, list(histories.unbind(0)))
        return self.codec.quantizer.encode(latent, self.num_codebooks), torch.stack(new)


class DecodeFrame(nn.Module):
    """``codes [B, K', T]``, ``histories [blocks, B, C, kernel-1]`` -> log-magnitudes and
    phase deviations ``[B, F, T]`` each and the new histories."""

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
    return histories, torch.zeros(batch, num_codebooks, EXAMPLE_FRAMES, dtype=torch.long)


def _dims():
    """The export's dynamic dimensions: batch and frames."""
    from torch.export import Dim

    return (Dim("batch", min=1, max=MAX_BATCH),
            Dim("frames", min=1, max=framecodec.ROUTE_MAX_FRAMES))


ENCODE_IO = (["feats", "histories"], ["codes", "new_histories"])
DECODE_IO = (["codes", "histories"], ["log_mag", "deviation", "new_histories"])


def _encoder_export(codec, num_codebooks: int) -> tuple:
    cfg = codec.config
    batch, frames = _dims()
    histories, _ = _examples(codec, num_codebooks, cfg.enc_blocks, EXAMPLE_BATCH)
    feats = torch.zeros(EXAMPLE_BATCH, 3 * (cfg.enc_n_fft // 2 + 1), EXAMPLE_FRAMES)
    return (EncodeFrame(codec, num_codebooks), (feats, histories),
            ({0: batch, 2: frames}, {1: batch}))


def _decoder_export(codec, num_codebooks: int) -> tuple:
    batch, frames = _dims()
    histories, codes = _examples(codec, num_codebooks, codec.config.dec_blocks, EXAMPLE_BATCH)
    return DecodeFrame(codec), (codes, histories), ({0: batch, 2: frames}, {1: batch})


def _load_trunks(codec, num_codebooks: int, route: str, quiet: bool) -> tuple:
    """Build (or load from the cache) both trunks on ``route``; returns them and the info."""
    key = digest([sys.modules[__name__], framecodec], {"config": codec.config_dict(),
                                                      "num_codebooks": num_codebooks}, codec)
    loaded, infos = [], []
    for name, export, names in (("encoder", _encoder_export, ENCODE_IO),
                                ("decoder", _decoder_export, DECODE_IO)):
        module, example, dynamic = export(codec, num_codebooks)
        first, histories = example  # batch 1: dim 0 of the first, dim 1 of the histories
        warmup = (first[:1, :, :1].contiguous(), histories[:, :1].contiguous())
        if route == "compiled":
            step, info = load_or_compile(
                f"codec {name}", key,
                lambda path, m=module, e=example, d=dynamic: compile_package(m, e, d, path),
                quiet, warmup=warmup,
            )
        else:
            step, info = load_or_compile(
                f"codec {name} onnx", f"{key}-ort{onnx_version()}".replace(".", ""),
                lambda path, m=module, e=example, d=dynamic, n=names: export_onnx(
                    m, e, d, path, n[0], n[1]),
                quiet, load=lambda path, n=names: OnnxModule(path, n[0], n[1]),
                suffix=".onnx", needs_compiler=False, engine="ONNX Runtime, fp32",
                warmup=warmup,
            )
        loaded.append(step)
        infos.append(info)
    info = RouteInfo(infos[0].name, infos[0].package, infos[0].compile_s + infos[1].compile_s,
                     infos[0].load_s + infos[1].load_s, engine=infos[0].engine)
    return loaded, info


def accelerate_codec(codec: nn.Module, num_codebooks: int, route: str = "auto",
                     quiet: bool = False) -> RouteInfo:
    """Run ``codec``'s streaming encoder and decoder (for ``num_codebooks`` levels) on
    ``route`` (``auto`` = ``onnx``, or ``eager`` where that cannot be built): sets
    ``codec.trunk_route`` (``None`` = eager). Codecs other than
    :class:`~stemstream.codec.framecodec.FrameCodec` stay eager (said in the note).

    Raises:
        RouteError: ``compiled`` asked for where it cannot run.
    """
    check_route(route)
    if isinstance(codec, framecodec.FrameCodec):
        codec.trunk_route = None
    if route == "eager":
        return RouteInfo("eager")
    if not isinstance(codec, framecodec.FrameCodec):
        return RouteInfo("eager", note=f"{type(codec).__name__} streams eagerly")
    try:
        (encode, decode), info = _load_trunks(codec, num_codebooks, route, quiet)
    except RouteError as error:
        if route != "auto":
            raise
        return RouteInfo("eager", note=str(error))
    codec.trunk_route = CompiledTrunks(encode, decode, num_codebooks)
    return info
