"""Resolve a codec by name or path: what ``--codec`` options accept.

* ``default`` — the shipped codec (``stemstream/assets/codecs/cpu16k.safetensors``);
* ``mock`` — :class:`~stemstream.codec.mock.MockCodec` (tests, demos without weights);
* a ``.safetensors`` file written by :func:`~stemstream.codec.checkpoint.save_codec`;
* a codec *training* checkpoint (``runs/.../checkpoints/step_*.safetensors``);
* a descript-audio-codec ``.pth`` (official DAC weights or the paper's causal DAC).
"""

from __future__ import annotations

from pathlib import Path

from stemstream.codec.base import Codec, CodecError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "codecs"
DEFAULT_CODEC = ASSETS / "cpu16k.safetensors"


def export_training_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the codec held in a training checkpoint as a standalone codec file."""
    from stemstream.codec.checkpoint import save_codec

    return save_codec(codec_from_training_checkpoint(path), out)


def codec_from_training_checkpoint(path: str | Path) -> Codec:
    from stemstream import checkpoint
    from stemstream.codec.checkpoint import CODEC_CLASSES

    tensors, meta = checkpoint.load(path)
    if meta.get("kind") != "codec-train":
        raise CodecError(f"{path}: not a codec training checkpoint")
    codec_class, config_class = CODEC_CLASSES[meta.get("codec_class", "FrameCodec")]
    codec = codec_class(config_class.from_dict(meta["codec"]))
    codec.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("codec/")})
    return codec.eval()


def get_codec(spec: str | Path = "default") -> Codec:
    """A ready (CPU, eval-mode) codec from a name or a path; see the module docstring."""
    from stemstream.codec.checkpoint import load_codec, load_dac_checkpoint

    name = str(spec)
    if name == "mock":
        from stemstream.codec.mock import MockCodec

        return MockCodec().eval()
    if name == "default":
        if not DEFAULT_CODEC.is_file():
            raise CodecError(
                f"the default codec is not in this checkout ({DEFAULT_CODEC}); train one with "
                "`stemstream codec train --config configs/codec/cpu16k.yaml` or pass --codec"
            )
        return load_codec(DEFAULT_CODEC)
    path = Path(name)
    if not path.is_file():
        raise CodecError(f"no codec named {name!r} (use default, mock or a file path)")
    if path.suffix == ".pth":
        return load_dac_checkpoint(path).eval()
    from stemstream import checkpoint

    try:
        if checkpoint.read_meta(path).get("kind") == "codec-train":
            return codec_from_training_checkpoint(path)
    except checkpoint.CheckpointError:
        pass
    return load_codec(path)
