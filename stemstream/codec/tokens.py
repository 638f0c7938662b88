"""Codes on disk: `stemstream codec encode/decode`.

A codes file is an ``.npz`` (no pickle) with ``codes`` (int16/int32 ``[K, T]``) and ``meta``
(a JSON string: codec identity, sample rate, frame rate, source file). Decoding checks that the
codec is the one that produced the codes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stemstream import audio
from stemstream.codec.base import CodecError, describe_identity, same_tokens
from stemstream.codec.registry import get_codec
from stemstream.outputs import atomic_output, audio_suffixes, check_output_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedFile:
    num_codebooks: int
    frames: int
    frame_rate: float

    @property
    def seconds(self) -> float:
        return self.frames / self.frame_rate


BLOCK_SECONDS = 10.0  # audio per step of the progress bar


def _in_blocks(stream, pieces: list[torch.Tensor], what: str, unit_seconds: float,
               progress: bool) -> torch.Tensor:
    """Run ``pieces`` through a streaming encoder or decoder, with a bar in seconds of audio;
    the result equals the codec's one-shot call (its streaming contract)."""
    from tqdm import tqdm

    total = sum(p.shape[-1] for p in pieces) * unit_seconds
    outputs = []
    with tqdm(total=round(total, 1), desc=what, unit="s", disable=not progress,
              leave=False) as bar:
        for piece in pieces:
            outputs.append(stream.step(piece))
            bar.update(round(piece.shape[-1] * unit_seconds, 1))
    outputs.append(stream.flush())
    return torch.cat(outputs, dim=-1)


def encode_file(
    path: str | Path, out: str | Path, codec_spec: str = "default",
    num_codebooks: int | None = None, progress: bool = False,
) -> EncodedFile:
    """Encode any audio file (resampled and downmixed as needed) to a codes ``.npz``, in
    blocks (``progress``: a bar in seconds of audio)."""
    out = check_output_path(out, "-o", [path], (".npz",))
    codec = get_codec(codec_spec)
    loaded = audio.load(path, sample_rate=codec.sample_rate, channels=1)
    wave = torch.from_numpy(loaded.samples)[None]
    codec.check_wave(wave, str(path))
    block = int(BLOCK_SECONDS * codec.sample_rate) // codec.hop_length * codec.hop_length
    with torch.inference_mode():
        codes = _in_blocks(codec.streaming_encoder(codec.check_num_codebooks(num_codebooks)),
                           list(wave.split(block, dim=-1)), "encode",
                           1 / codec.sample_rate, progress)
    dtype = np.int16 if codec.codebook_size <= np.iinfo(np.int16).max else np.int32
    meta = {
        "codec": codec.codec_identity(),
        "sample_rate": codec.sample_rate,
        "frame_rate": codec.frame_rate,
        "source": str(path),
        "num_samples": int(loaded.samples.shape[-1]),
    }
    with atomic_output(out) as tmp:
        np.savez(tmp, codes=codes[0].numpy().astype(dtype), meta=np.array(json.dumps(meta)))
    return EncodedFile(codes.shape[1], codes.shape[2], codec.frame_rate)


def read_codes(path: str | Path) -> tuple[np.ndarray, dict]:
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"codes file not found: {path}")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CodecError(f"{path}: not a codes .npz written by `stemstream codec encode`")
    try:
        with np.load(path, allow_pickle=False) as data:
            codes, meta = data["codes"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise CodecError(
            f"{path}: not a codes file written by `stemstream codec encode` ({err})"
        ) from err
    if codes.ndim != 2:
        raise CodecError(f"{path}: codes must be [K, T], got shape {codes.shape}")
    if codes.dtype.kind not in "iu":
        raise CodecError(f"{path}: codes must be integers, got {codes.dtype}")
    return codes, meta


def decode_file(path: str | Path, out: str | Path, codec_spec: str = "default",
                progress: bool = False) -> float:
    """Decode a codes ``.npz`` to audio, in blocks (``progress``: a bar in seconds of audio);
    returns the duration in seconds."""
    check_output_path(out, "-o", [path], audio_suffixes())
    codes, meta = read_codes(path)
    codec = get_codec(codec_spec)
    identity = codec.codec_identity()
    recorded = meta.get("codec", {})
    hashes = ("weights_hash", "tokens_hash")
    if any(recorded.get(key) for key in hashes) and not same_tokens(recorded, identity):
        raise CodecError(
            f"{path} was encoded by codec {describe_identity(recorded)}, whose tokens "
            f"{describe_identity(identity)} does not share; pass the same --codec"
        )
    tensor = codec.check_codes(torch.from_numpy(codes.astype(np.int64))[None])
    frames = max(1, int(BLOCK_SECONDS * codec.frame_rate))
    with torch.inference_mode():
        wave = _in_blocks(codec.streaming_decoder(), list(tensor.split(frames, dim=-1)),
                          "decode", 1 / codec.frame_rate, progress)[0]
    n = int(meta.get("num_samples", wave.shape[-1]))
    audio.save(out, wave[:, :n].numpy(), codec.sample_rate)
    return n / codec.sample_rate
