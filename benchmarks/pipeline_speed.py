"""Does a two-stage pipeline use the second core (issue 17, item 3)? The streaming work of one
session split in two stages, measured against the same stages run one after the other:

* stage 1, the input: the codec's streaming encoder and the input features
  (:class:`~stemstream.stream.inputs.InputStream`), block by block;
* stage 2, the output: the decoder's steps for every frame the heard input allows
  (``c + t_f <= heard``) and the codec's streaming decoder for the frames they complete.

``serial`` runs stage 1 then stage 2 for each block on one thread (what a session does);
``pipelined`` runs stage 1 on a second thread that hands each block's latents to stage 2
through a queue, so the encoder of later blocks runs while the model and decoder work (ONNX
Runtime and most torch kernels release the GIL). Both stream the same generated audio
unpaced with the same seeds; the script checks that their audio is identical and prints the
wall time per 20 ms of audio (the real-time factor of the slower stage bounds the pipeline).

    python benchmarks/pipeline_speed.py [--model default-live] [--weights int8]
        [--seconds 6] [--codec-block 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from typing import Any

import numpy as np
import torch

from stemstream.data.instruments import class_from_name
from stemstream.model.sampling import SamplingConfig
from stemstream.stream.bench import synthetic_music
from stemstream.stream.inputs import InputStream
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import DEFAULT_WINDOW


class OutputStage:
    """Stage 2: the model's steps for the heard input, then the codec decoder."""

    def __init__(self, loaded, inst: int, seed: int, codec_block: int) -> None:
        model, cfg = loaded.model, loaded.model.config
        self.model, self.cfg = model, cfg
        self.sampling = SamplingConfig(guidance=loaded.guidance)
        self.state = model.new_state(torch.tensor([inst]), window=DEFAULT_WINDOW,
                                     guided=self.sampling.guided)
        self.generator = torch.Generator().manual_seed(seed)
        self.decoder = loaded.codec.streaming_decoder()
        self.latents: torch.Tensor | None = None  # heard frames from `offset` on
        self.offset, self.heard, self.frames_out = 0, 0, 0
        self.delayed = torch.zeros(1, cfg.num_codebooks, 0, dtype=torch.long)
        self.codec_block = codec_block
        self.audio: list[np.ndarray] = []

    def take(self, latents: torch.Tensor) -> None:
        """Hear ``latents [1, D_in, n]`` and produce every frame they allow."""
        self.latents = latents if self.latents is None else torch.cat([self.latents, latents],
                                                                      dim=-1)
        self.heard += latents.shape[-1]
        cfg = self.cfg
        while self.state.step + cfg.future_frames <= self.heard:
            chunk = self.model.generate_chunk(self.state, self.latents, self.sampling,
                                              self.generator, input_offset=self.offset)
            self.delayed = torch.cat([self.delayed, chunk], dim=-1)
            self.state.forget_tokens(cfg.chunk_frames + 1)
        complete = self.state.step - (cfg.num_codebooks - 1)
        count = (complete - self.frames_out) // self.codec_block * self.codec_block
        if count > 0:
            codes = torch.stack([self.delayed[:, q, q : q + count]
                                 for q in range(cfg.num_codebooks)], dim=1)
            self.delayed = self.delayed[..., count:]
            self.frames_out += count
            self.audio.append(self.decoder.step(codes)[0, 0].float().numpy())
        # forget the input frames no later step reads
        first = self.state.step + cfg.future_frames - 1 - self.model.input_context
        drop = min(max(0, first - self.offset), self.latents.shape[-1])
        self.latents, self.offset = self.latents[..., drop:], self.offset + drop


def stream(loaded, wave: np.ndarray, block: int, codec_block: int, pipelined: bool
           ) -> tuple[np.ndarray, float]:
    """Stream ``wave`` (codec rate) in ``block``-sample pieces; ``(audio, wall seconds)``."""
    torch.manual_seed(0)
    inputs = InputStream(loaded.codec, loaded.model.config)
    output = OutputStage(loaded, inst=class_from_name("Bass"), seed=0, codec_block=codec_block)
    pieces = [torch.from_numpy(np.ascontiguousarray(wave[i : i + block]))[None, None]
              for i in range(0, wave.shape[0] - block + 1, block)]
    began = time.perf_counter()
    with torch.inference_mode():
        if not pipelined:
            for piece in pieces:
                output.take(inputs.step(piece))
        else:
            handoff: queue.Queue = queue.Queue()

            def encode() -> None:
                with torch.inference_mode():
                    for piece in pieces:
                        handoff.put(inputs.step(piece))
                handoff.put(None)

            worker = threading.Thread(target=encode)
            worker.start()
            while (latents := handoff.get()) is not None:
                output.take(latents)
            worker.join()
    seconds = time.perf_counter() - began
    return np.concatenate(output.audio), seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    loaded = load_stream_model(args.model, weights=args.weights)
    rate, hop = loaded.codec.sample_rate, loaded.codec.hop_length
    wave = synthetic_music(args.seconds, rate, seed=0).astype(np.float32)
    block = hop * args.codec_block
    stream(loaded, wave[: rate], block, args.codec_block, pipelined=False)  # warm-up
    rows: dict[str, list[float]] = {}
    audio: dict[str, np.ndarray] = {}
    for mode in ("serial", "pipelined") * 2:  # twice each, interleaved
        out, seconds = stream(loaded, wave, block, args.codec_block, mode == "pipelined")
        audio.setdefault(mode, out)
        rows.setdefault(mode, []).append(seconds / args.seconds)
    same = bool(np.array_equal(audio["serial"], audio["pipelined"]))
    return {"model": loaded.source, "weights": loaded.weights, "routes": loaded.describe_routes(),
            "seconds": args.seconds, "codec_block": args.codec_block,
            "rtf": {mode: min(values) for mode, values in rows.items()},
            "rtf_runs": rows, "identical_audio": same, "samples": int(audio["serial"].size),
            "rms": float(np.sqrt(np.mean(audio["serial"] ** 2)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default-live")
    parser.add_argument("--weights", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--codec-block", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} ({result['weights']}; {result['routes']}), {args.seconds:g} s "
          f"unpaced, codec blocks of {args.codec_block} frames")
    serial, piped = result["rtf"]["serial"], result["rtf"]["pipelined"]
    print(f"  serial    (one thread)                RTF {serial:.3f}")
    print(f"  pipelined (encoder on a second thread) RTF {piped:.3f}  "
          f"({serial / piped:.2f}x)")
    print(f"  identical audio: {result['identical_audio']}")


if __name__ == "__main__":
    main()
