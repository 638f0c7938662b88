"""A long stream holds constant memory: 10 minutes at 16 kHz in 20 ms blocks through the
default-shaped MockCodec and a tiny streaming decoder with a 64-position KV ring.

Slow (about 30 000 chunks); run with ``pytest -m slow -s tests/stream/test_session_memory.py``
to see the numbers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from stemstream.codec.mock import MockCodec, MockCodecConfig
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig
from stemstream.stream.session import Session, SessionConfig

RATE = 16000
BLOCK = RATE // 50  # 20 ms
MINUTES = 10
KEEP_RECORDS = 2000  # fewer than one minute of chunks: the record lists are full by then


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def buffer_sizes(session: Session) -> dict[str, int]:
    """Sizes of everything in the session that could grow with the stream."""
    caches = session.state.caches
    return {
        "latents": session.latents.shape[-1],
        "frame_ready": len(session.frame_ready),
        "delayed": session.delayed.shape[-1],
        "records": len(session.records),
        "pushes": len(session.pushes),
        "tokens": len(session.state.tokens),
        "cache_bytes": sum(
            tensor_bytes(c.keys) + tensor_bytes(c.values) + tensor_bytes(c.positions)
            for c in caches
        ),
        "cache_cached": max(c.num_cached for c in caches),
        "encoder_state": sum(tensor_bytes(v) for v in session.inputs.state_dict().values()),
        "decoder_state": sum(tensor_bytes(v) for v in session.decoder.state_dict().values()),
        "resampler_buffer": session.resampler.state_dict()["buffer"].numel(),
        "snapshot_bytes": sum(tensor_bytes(v) for v in session.state_dict()[0].values()),
    }


@pytest.mark.slow
def test_ten_minute_stream_holds_constant_memory():
    torch.manual_seed(0)
    codec = MockCodec(MockCodecConfig()).eval()
    model = StreamingDecoder(
        StreamingDecoderConfig(
            backbone=TransformerConfig.preset("tiny"),
            num_codebooks=4,
            codebook_size=codec.codebook_size,
            input_dim=codec.latent_dim,
            future_frames=0,
            chunk_frames=1,
        )
    ).eval()
    session = Session(
        model,
        codec,
        SessionConfig(
            instrument="bass", input_sample_rate=RATE, window=64, keep_records=KEEP_RECORDS
        ),
    )
    rng = np.random.default_rng(0)
    # one second of audio, reused (a fresh random block per push would measure numpy, not us)
    t = np.arange(RATE) / RATE
    second = (0.3 * np.sin(2 * np.pi * 110 * t) + 0.05 * rng.standard_normal(RATE)).astype(
        np.float32
    )
    blocks_per_second = RATE // BLOCK
    snapshots = {}
    began = time.perf_counter()
    out_samples = 0
    for minute in range(1, MINUTES + 1):
        for _ in range(60):
            for b in range(blocks_per_second):
                out = session.push(second[b * BLOCK : (b + 1) * BLOCK])
                out_samples += out.shape[0]
        if minute in (1, MINUTES):
            snapshots[minute] = (rss_bytes(), buffer_sizes(session), time.perf_counter() - began)
    tail = session.finish()
    out_samples += tail.shape[0]

    (rss_1, sizes_1, time_1), (rss_n, sizes_n, time_n) = snapshots[1], snapshots[MINUTES]
    growth_mb = (rss_n - rss_1) / 2**20
    print(
        f"\n{MINUTES}-minute stream: {session.stats.chunks} chunks, {session.stats.pushes} "
        f"pushes, {time_n:.1f} s ({time_n / (60 * MINUTES):.3f} x real time; first minute "
        f"{time_1:.1f} s)\nRSS after 1 min {rss_1 / 2**20:.1f} MiB, after {MINUTES} min "
        f"{rss_n / 2**20:.1f} MiB: growth {growth_mb:+.2f} MiB"
        f"\nbuffers after 1 min:  {sizes_1}\nbuffers after {MINUTES} min: {sizes_n}"
    )
    assert out_samples == session.output_length == MINUTES * 60 * RATE
    assert sizes_n == sizes_1, "session buffers grew with the stream"
    assert sizes_n["records"] == sizes_n["pushes"] == KEEP_RECORDS
    assert sizes_n["tokens"] <= model.config.chunk_frames + 1
    assert sizes_n["latents"] <= model.config.chunk_frames + 2
    assert sizes_n["cache_cached"] <= 64
    assert session.stats.chunks == MINUTES * 60 * 50 + 3
    assert growth_mb < 5  # issue 17: < 5 MiB after the first minute (records live in tables)
