"""stemstream.codec (see SPEC.md section 4): the Codec interface, our DAC implementation
(causal or not, parameter-compatible with descript-audio-codec), and a MockCodec for tests.
"""

from stemstream.codec.base import AudioStreamDecoder, AudioStreamEncoder, Codec, CodecError
from stemstream.codec.checkpoint import load_codec, load_dac_checkpoint, save_codec
from stemstream.codec.dac import DAC, DAC_PRESETS, DACConfig
from stemstream.codec.mock import MockCodec, MockCodecConfig

__all__ = [
    "DAC",
    "DAC_PRESETS",
    "Codec",
    "CodecError",
    "DACConfig",
    "MockCodec",
    "MockCodecConfig",
    "AudioStreamDecoder",
    "AudioStreamEncoder",
    "load_codec",
    "load_dac_checkpoint",
    "save_codec",
]
