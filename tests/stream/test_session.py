"""The real-time session: streamed == offline, exact save/load, deadline accounting on a
scripted clock, any input rate/channels, bad input, reports (tiny model, MockCodec)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch

from stemstream.codec.mock import MockCodec, MockCodecConfig
from stemstream.errors import ConfigError
from stemstream.features import FEATURE_NAMES, features
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig
from stemstream.stream.clock import VirtualClock
from stemstream.stream.offline import generate_codes
from stemstream.stream.report import plot_timeline, write_report
from stemstream.stream.resample import StreamResampler
from stemstream.stream.session import Session, SessionConfig, StreamError, run_blocks

K, V, D_IN = 4, 64, 16
HOP, SR = 40, 4000  # 10 ms frames
INST = 3


def make_codec(sample_rate: int = SR, hop: int = HOP, seed: int = 0) -> MockCodec:
    config = MockCodecConfig(
        hop_length=hop, codebook_size=V, latent_dim=D_IN, sample_rate=sample_rate, seed=seed
    )
    return MockCodec(config).eval()


def make_model(
    t_f: int, k: int, seed: int = 0, backbone: TransformerConfig | None = None,
    encoder: str = "frame",
) -> StreamingDecoder:
    """``encoder``: ``frame``, ``conv`` or ``conv+features`` (conv, hearing every input
    feature of :mod:`stemstream.features` too)."""
    torch.manual_seed(seed)
    encoder, _, extra = encoder.partition("+")
    config = StreamingDecoderConfig(
        backbone=backbone or TransformerConfig.preset("tiny"),
        num_codebooks=K,
        codebook_size=V,
        input_dim=D_IN,
        future_frames=t_f,
        chunk_frames=k,
        input_encoder=encoder,
        input_window=6,
        input_features=FEATURE_NAMES if extra else (),
    )
    model = StreamingDecoder(config).eval()
    with torch.no_grad():
        model.gate.fill_(0.7)  # zero at init would hide the token path
        if model.input_encoder is not None:  # its taps start at zero: make them matter
            for param in model.input_encoder.parameters():
                param.normal_(0.0, 0.3)
    return model


@functools.cache
def shared_model(t_f: int, k: int, encoder: str = "frame") -> StreamingDecoder:
    """A model reused across tests (never mutate it)."""
    return make_model(t_f, k, encoder=encoder)


@functools.cache
def shared_codec() -> MockCodec:
    return make_codec()


def noise(samples: int, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * scale).astype(np.float32)


class FakeTimer:
    """A scripted timer: time moves only when a test (or a slowed model) advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def session(model, codec=None, clock=None, **config) -> Session:
    """A session of ``model`` (the mock codec); frame-by-frame codec work unless the test
    asks for ``codec_block`` (``None``: the latency budget's default)."""
    config = {"instrument": INST, "input_sample_rate": SR, "codec_block": 1, **config}
    return Session(
        model, codec or shared_codec(), SessionConfig(**config), clock or VirtualClock(FakeTimer())
    )


def push_all(sess: Session, audio: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Push ``audio`` in blocks cycling through ``sizes``; return each push's output."""
    out, pos, i = [], 0, 0
    while pos < audio.shape[0]:
        out.append(sess.push(audio[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    return out


# ----------------------------------------------------------------- streamed == offline
WAVE = noise(HOP * 37 + 13)


def offline_reference(model: StreamingDecoder, codec: MockCodec, wave: np.ndarray,
                      guidance: float | tuple[float, ...] = 1.0) -> np.ndarray:
    with torch.inference_mode():
        w = torch.from_numpy(wave)[None, None]
        latents = codec.embed(codec.encode(w)[:, :K])
        if model.config.input_features:  # computed offline, in one piece
            extra = features(wave, codec.sample_rate, codec.hop_length,
                             model.config.input_features)
            latents = torch.cat([latents, torch.from_numpy(extra)[None]], dim=1)
        codes = generate_codes(
            model,
            latents,
            torch.tensor([INST]),
            SamplingConfig(0.0, 200, guidance),
            torch.Generator().manual_seed(0),
        )
        return codec.decode(codes)[0, 0, : wave.shape[0]].numpy()


@pytest.mark.parametrize("encoder", ["frame", "conv", "conv+features"])
@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_session_equals_offline_generation(t_f, k, encoder):
    model, codec = shared_model(t_f, k, encoder), shared_codec()
    ref = offline_reference(model, codec, WAVE)
    n = WAVE.shape[0]
    patterns = {
        "whole": [n],
        "1-sample": [1],
        "mixed": [1, 7, 40, 99, 3],
        "odd": [333],
        "hop": [HOP],
        "larger-than-signal": [n + 500],
    }
    # codec blocks: one frame per codec call, and the default (several frames at L = 0.2 s)
    block = 1 if encoder == "frame" else None
    for name, sizes in patterns.items():
        sess = session(model, temperature=0.0, window=4096, codec_block=block)
        out = run_blocks(sess, WAVE, sizes)
        assert out.dtype == np.float32
        assert out.shape == ref.shape == (sess.output_length,), name
        assert np.array_equal(out, ref), f"{name}: streamed output differs from offline"
        steps = math.ceil(n / HOP) + K - 1
        assert sess.stats.chunks == math.ceil(steps / k), name
        assert sess.state.step == math.ceil(steps / k) * k


@pytest.mark.parametrize("t_f", [-3, 2])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("guidance", [3.0, (3.0, 1.0, 2.0, 0.5)])
def test_guided_session_equals_guided_offline_generation(t_f, k, guidance):
    model, codec = shared_model(t_f, k, "conv"), shared_codec()
    ref = offline_reference(model, codec, WAVE, guidance=guidance)
    assert not np.array_equal(ref, offline_reference(model, codec, WAVE))  # guidance acts
    for sizes in ([WAVE.shape[0]], [1, 7, 40, 99, 3]):
        sess = session(model, temperature=0.0, window=4096, guidance=guidance)
        assert np.array_equal(run_blocks(sess, WAVE, sizes), ref), sizes


def test_a_session_refuses_guidance_for_another_number_of_codebooks():
    with pytest.raises(ConfigError, match="2 weights for a model of 4 codebooks"):
        session(shared_model(0, 1, "conv"), guidance=(3.0, 1.0))


@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 4])
def test_push_returns_audio_as_soon_as_its_frames_are_complete(t_f, k):
    """After ``h`` heard frames, every chunk ``c`` with ``c + t_f <= h`` has run and every
    frame whose last codebook exists (step ``t + K - 1``) has been rendered."""
    sess = session(shared_model(t_f, k), temperature=0.0, window=4096, codec_block=1)
    total = 0
    for j in range(1, 21):
        out = sess.push(WAVE[(j - 1) * HOP : j * HOP])
        chunks = (j - t_f) // k + 1 if j - t_f >= 0 else 0
        frames = max(0, chunks * k - (K - 1))
        total += out.shape[0]
        assert total == frames * HOP, f"after {j} frames"
        assert sess.heard_frames == j
        # only input frames a future chunk can still reach are kept
        assert sess.latents.shape[-1] <= k + max(t_f, 0) + 2


@pytest.mark.parametrize("t_f", [-3, 2])
def test_codec_blocks_hold_audio_for_whole_blocks_only(t_f):
    """With ``codec_block = n`` the codec runs on blocks of ``n`` frames: input is encoded
    once ``n`` frames arrived, output rendered once ``n`` frames are decided (a frame waits
    at most ``2 (n - 1)`` frames more than frame by frame), and the audio is the same."""
    n = 4
    alone = session(shared_model(t_f, 1), temperature=0.0, window=4096, codec_block=1)
    blocked = session(shared_model(t_f, 1), temperature=0.0, window=4096, codec_block=n)
    assert blocked.codec_block == n
    total_alone = total_blocked = 0
    outputs = []
    for j in range(1, 31):
        piece = WAVE[(j - 1) * HOP : j * HOP]
        total_alone += alone.push(piece).shape[0]
        out = blocked.push(piece)
        outputs.append(out)
        total_blocked += out.shape[0]
        assert out.shape[0] % (n * HOP) == 0  # whole blocks only
        assert total_alone - 2 * (n - 1) * HOP <= total_blocked <= total_alone
        assert blocked.held.shape[0] < n * HOP
    outputs.append(blocked.push(WAVE[30 * HOP :]))
    outputs.append(blocked.finish())
    assert np.array_equal(np.concatenate(outputs),
                          offline_reference(shared_model(t_f, 1), shared_codec(), WAVE))
    auto = session(shared_model(t_f, 1), latency=0.2, codec_block=None)  # 20 frames of 10 ms
    assert auto.codec_block == 1 + (20 - max(0, t_f + K - 1)) // 4
    assert session(shared_model(t_f, 1), latency=0.0, codec_block=None).codec_block == 1
    with pytest.raises(ConfigError, match="codec_block"):
        SessionConfig(codec_block=0)


def test_session_rejects_a_mismatched_model_or_codec():
    from stemstream.errors import ConfigError

    with pytest.raises(ConfigError):
        Session(shared_model(0, 1), MockCodec(MockCodecConfig()))  # V = 1024
    with pytest.raises(ConfigError):
        Session(torch.nn.Linear(2, 2), shared_codec())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        session(shared_model(0, 1), instrument=99)


# --------------------------------------------------------------------------- snapshots
SNAPSHOT_CASES = [
    pytest.param(0, 1, SR, None, None, "frame", id="k1"),
    pytest.param(0, 4, SR, None, None, "frame", id="k4"),
    pytest.param(2, 4, SR, None, None, "frame", id="k4-tf2"),
    pytest.param(-3, 1, SR, None, None, "frame", id="k1-tf-3"),
    pytest.param(0, 4, SR, None, 16, "frame", id="k4-ring-wraps"),
    pytest.param(0, 1, 44100, 48000, None, "frame", id="k1-44k1-in-48k-out"),
    pytest.param(3, 2, SR, None, 16, "conv", id="k2-tf3-conv-input-ring-wraps"),
    pytest.param(2, 1, 44100, None, None, "conv+features", id="k1-tf2-features-44k1-in"),
    pytest.param(2, 4, SR, None, 16, "conv+guidance", id="k4-tf2-guided-ring-wraps"),
]


def _stereo(wave: np.ndarray) -> np.ndarray:
    return np.stack([wave, 0.5 * wave[::-1]], axis=1)


@pytest.mark.parametrize(("t_f", "k", "rate_in", "rate_out", "window", "encoder"),
                         SNAPSHOT_CASES)
def test_save_load_mid_stream_continues_bit_identically(
    tmp_path, t_f, k, rate_in, rate_out, window, encoder
):
    encoder, guided, _ = encoder.partition("+guidance")
    model = shared_model(t_f, k, encoder)
    kwargs = {
        "codec_block": None if encoder != "frame" else 1,  # several frames per codec call
        "guidance": 2.0 if guided else 1.0,
        "temperature": 1.0,
        "seed": 7,
        "input_sample_rate": rate_in,
        "output_sample_rate": rate_out,
        "window": window,
    }
    audio = noise(int(0.5 * rate_in), seed=3)
    sizes = [17, 40, 333, 1, 95, 40]

    reference_session = session(model, **kwargs)
    reference = run_blocks(reference_session, audio, sizes)

    cuts = [0, 1, 6]
    blocks, pos, i = [], 0, 0
    while pos < audio.shape[0]:
        blocks.append(audio[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    cuts.append(len(blocks))  # everything pushed, not finished yet
    for cut in cuts:
        first = session(model, **kwargs)
        head = [first.push(b) for b in blocks[:cut]]
        path = first.save(tmp_path / f"cut{cut}.safetensors")
        tensors, meta = first.state_dict()
        json.dumps(meta)  # JSON-safe

        for how in ("file", "state_dict", "same-object")[: 3 if cut == 6 else 2]:
            if how == "file":
                resumed = session(model, **kwargs)
                resumed.load(path)
            elif how == "state_dict":
                resumed = session(model, **kwargs)
                resumed.load_state_dict(tensors, meta)
            else:
                resumed = first  # saving must not disturb the stream
            tail = [resumed.push(b) for b in blocks[cut:]] + [resumed.finish()]
            out = np.concatenate(head + tail)[: resumed.output_length]
            assert out.shape == reference.shape, (cut, how)
            assert np.array_equal(out, reference), f"cut after {cut} pushes via {how}"
            assert dataclasses.asdict(resumed.stats) == dataclasses.asdict(
                reference_session.stats
            ), (cut, how)


def test_snapshot_of_another_config_codec_or_stream_args_is_refused(tmp_path):
    model = shared_model(0, 1)
    source = session(model, temperature=1.0)
    push_all(source, noise(HOP * 10), [HOP])
    path = source.save(tmp_path / "s.safetensors")
    tensors, meta = source.state_dict()

    for other in (
        session(model, temperature=0.5),
        session(model, temperature=1.0, window=128),
        session(model, temperature=1.0, latency=0.3),
        session(model, temperature=1.0, instrument=INST + 1),
        session(model, temperature=1.0, codec=make_codec(seed=1)),
        session(shared_model(2, 1), temperature=1.0),  # another t_f
        session(shared_model(0, 4), temperature=1.0),  # another k
    ):
        before = other.state_dict()
        with pytest.raises(StreamError):
            other.load(path)
        with pytest.raises(StreamError):
            other.load_state_dict(tensors, meta)
        after = other.state_dict()
        assert after[1] == before[1]  # a refused snapshot leaves the session alone
    with pytest.raises(StreamError):
        session(model, temperature=1.0).load_state_dict(tensors, {**meta, "format": "x"})


@pytest.mark.parametrize(
    "backbone",
    [
        pytest.param(TransformerConfig.preset("cpu"), id="wider-deeper"),
        pytest.param(
            dataclasses.replace(TransformerConfig.preset("tiny"), num_layers=3), id="deeper"
        ),
        pytest.param(
            dataclasses.replace(TransformerConfig.preset("tiny"), num_layers=1), id="shallower"
        ),
    ],
)
def test_snapshot_of_another_model_shape_is_refused_with_stream_error(tmp_path, backbone):
    """Same session config, t_f and k, but a backbone of another shape: the snapshot is
    unusable and must raise StreamError (and the session stays usable)."""
    source = session(shared_model(0, 1), temperature=1.0, window=64)
    push_all(source, noise(HOP * 10), [HOP])
    path = source.save(tmp_path / "s.safetensors")

    other = session(make_model(0, 1, backbone=backbone), temperature=1.0, window=64)
    with pytest.raises(StreamError):
        other.load(path)
    assert run_blocks(other, noise(HOP * 3), [HOP]).shape == (HOP * 3,)


# ------------------------------------------------------------------ deadline accounting
# Dyadic times make every timeline value exact in floating point: 4096 Hz, 32-sample hop,
# frames of 1/128 s; latencies sit half a sample off the grid, so no sample is due exactly
# when a chunk ends (except where a test wants that tie).
D_SR, D_HOP = 4096, 32
FRAME = D_HOP / D_SR
HALF_SAMPLE = 0.5 / D_SR


@functools.cache
def dyadic_codec() -> MockCodec:
    return make_codec(sample_rate=D_SR, hop=D_HOP)


def slowed(model: StreamingDecoder, timer: FakeTimer, cost: float) -> StreamingDecoder:
    """Each ``generate_chunk`` call takes ``cost`` seconds of the fake timer."""
    inner = model.generate_chunk

    def generate_chunk(*args, **kwargs):
        out = inner(*args, **kwargs)
        timer.advance(cost)
        return out

    model.generate_chunk = generate_chunk  # instance attribute: the class stays untouched
    return model


@dataclasses.dataclass
class Expected:
    step: int
    frames: int
    ready: float
    start: float
    end: float
    first_sample: int
    deadline: float | None
    slack: float | None
    late: int


def predict(
    samples: int, block: int, t_f: int, k: int, cost: float, latency: float
) -> list[Expected]:
    """The timeline from the definitions, independently of the session's code: one worker;
    each block arrives when its last sample has been captured and is encoded (cost 0) as soon
    as the worker is free, which makes its frames ready; chunk ``c`` runs once the frame it
    needs (``c + t_f - 1``) is ready and the worker is free and takes ``cost``; it renders the
    frames whose last codebook (step ``t + K - 1``) now exists; their first sample is due at
    ``n / sr + L``; a sample is late when it is due before the chunk ends."""
    busy, heard, step, frames_out = 0.0, 0, 0, 0
    ready: list[float] = []
    out: list[Expected] = []

    def encode(arrival: float, frames: int) -> None:
        nonlocal busy, heard
        busy = max(arrival, busy)
        ready.extend([busy] * (frames - heard))
        heard = frames

    def run_chunks(final: bool) -> None:
        nonlocal busy, step, frames_out
        while (step < heard + K - 1) if final else (step + t_f <= heard):
            need = step + t_f - 1
            when = 0.0 if need < 0 else ready[min(need, len(ready) - 1)]
            start = max(when, busy)
            end = busy = start + cost
            complete = step + k - (K - 1)
            if final:
                complete = min(complete, heard)
            count = max(0, complete - frames_out)
            first = frames_out * D_HOP
            frames_out += count
            deadline = slack = None
            late = 0
            if count:
                deadline = first / D_SR + latency
                slack = deadline - end
                late = sum(
                    1 for n in range(first, first + count * D_HOP) if n / D_SR + latency < end
                )
            out.append(Expected(step, count, when, start, end, first, deadline, slack, late))
            step += k

    run_chunks(final=False)  # preroll: chunks that need no input run at time 0
    pos = 0
    while pos < samples:
        pos = min(pos + block, samples)
        encode(pos / D_SR, pos // D_HOP)
        run_chunks(final=False)
    encode(samples / D_SR, -(-samples // D_HOP))
    run_chunks(final=True)
    return out


def run_timed(t_f, k, cost, latency, samples, block, policy=None, seed=5):
    timer = FakeTimer()
    model = make_model(t_f, k)
    if cost:
        slowed(model, timer, cost)
    sess = Session(
        model,
        dyadic_codec(),
        SessionConfig(
            instrument=INST,
            input_sample_rate=D_SR,
            latency=latency,
            temperature=1.0,
            seed=seed,
            policy=policy,
            window=4096,
            codec_block=1,  # the closed forms are frame by frame
        ),
        VirtualClock(timer=timer),
    )
    wave = noise(samples, seed=11)
    return sess, run_blocks(sess, wave, [block])


def assert_records_match(sess: Session, expected: list[Expected], t_f: int, k: int) -> None:
    assert len(sess.records) == len(expected) == sess.stats.chunks
    for rec, exp in zip(sess.records, expected, strict=True):
        where = f"chunk {rec.index} (step {rec.step})"
        assert rec.step == exp.step, where
        assert rec.frames == exp.frames, where
        assert rec.ready == pytest.approx(exp.ready, abs=1e-9), where
        assert rec.start == pytest.approx(exp.start, abs=1e-9), where
        assert rec.end == pytest.approx(exp.end, abs=1e-9), where
        assert rec.model_s == pytest.approx(rec.model_end - rec.start, abs=1e-12), where
        assert rec.codec_out_s == pytest.approx(0.0, abs=1e-12), where
        if exp.deadline is None:
            assert rec.deadline is None and rec.slack is None, where
        else:
            assert rec.deadline == pytest.approx(exp.deadline, abs=1e-9), where
            assert rec.slack == pytest.approx(exp.slack, abs=1e-9), where
        assert rec.late_samples == exp.late, where
        assert rec.missed == (exp.late > 0), where
        assert rec.recency_gap == (k - 1) / 2 - t_f, where
    assert sess.stats.missed_chunks == sum(e.late > 0 for e in expected)
    assert sess.stats.late_samples == sum(e.late for e in expected)
    assert sess.stats.missed_frames == sum(math.ceil(e.late / D_HOP) for e in expected)


def test_slow_model_misses_exactly_the_predicted_chunks_closed_form():
    """k = 1, t_f = 0, 1.5 frames of compute per chunk, one frame per block: chunk 0 needs no
    input and runs at preroll (time 0), and from then on the worker is always busy, so chunk
    ``c`` ends at ``1.5 F (c + 1)``; it renders frame ``c - 3``, due at ``(c - 3) F + L``: slack
    ``L - 4.5 F - 0.5 c F``. With ``L = 20 F + half a sample`` chunks from 32 on miss; chunk 32
    has 16 late samples, later ones all 32."""
    frames = 48
    latency = 20 * FRAME + HALF_SAMPLE
    sess, _ = run_timed(0, 1, 1.5 * FRAME, latency, frames * D_HOP, D_HOP)
    records = sess.records
    assert len(records) == frames + K - 1
    for rec in records:
        c = rec.step
        assert rec.end == pytest.approx(1.5 * FRAME * (c + 1), abs=1e-12)
        if c < K - 1:
            assert rec.deadline is None and not rec.missed
            continue
        assert rec.slack == pytest.approx(latency - 4.5 * FRAME - 0.5 * c * FRAME, abs=1e-9)
        assert rec.missed == (c >= 32), c
        assert rec.late_samples == (0 if c < 32 else 16 if c == 32 else 32), c
    assert sess.stats.missed_chunks == frames + K - 1 - 32


@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("block", [D_HOP, 3 * D_HOP + 5])
def test_slow_model_records_match_the_predicted_timeline(t_f, k, block):
    cost = 1.5 * FRAME * k  # per chunk of k frames: 1.5x slower than real time
    latency = 12 * FRAME + HALF_SAMPLE
    samples = 40 * D_HOP
    sess, _ = run_timed(t_f, k, cost, latency, samples, block)
    expected = predict(samples, block, t_f, k, cost, latency)
    assert sum(e.late > 0 for e in expected) > 0  # the scenario does miss
    assert_records_match(sess, expected, t_f, k)


@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 4])
def test_policies_silence_exactly_the_late_samples_or_keep_them(t_f, k):
    cost = 1.5 * FRAME * k
    latency = 12 * FRAME + HALF_SAMPLE
    samples = 40 * D_HOP + 7
    expected = predict(samples, D_HOP, t_f, k, cost, latency)
    _, fast = run_timed(t_f, k, 0.0, latency, samples, D_HOP, policy="late")

    late_sess, late_out = run_timed(t_f, k, cost, latency, samples, D_HOP, policy="late")
    assert np.array_equal(late_out, fast)  # content never depends on timing
    assert late_sess.stats.silenced_samples == 0

    silence_sess, silence_out = run_timed(t_f, k, cost, latency, samples, D_HOP, policy="silence")
    want = fast.copy()
    for e in expected:
        want[e.first_sample : e.first_sample + e.late] = 0.0  # late samples are a prefix
    assert np.array_equal(silence_out, want)
    assert silence_sess.stats.silenced_samples == silence_sess.stats.late_samples
    assert silence_sess.stats.late_samples == sum(e.late for e in expected) > 0
    assert_records_match(silence_sess, expected, t_f, k)


@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [1, 4])
def test_fast_model_meets_every_deadline_with_the_delay_pattern_latency(t_f, k):
    """With free compute and one frame per block, a chunk runs when the frame it needs
    arrives: the newest frame it renders is due ``(K - 1 + t_f)`` frames before that (chunks
    that need no input run at preroll, time 0), so that latency suffices exactly and half a
    sample less misses."""
    samples = 30 * D_HOP
    need = max(K - 1 + t_f, 0) * FRAME
    sess, _ = run_timed(t_f, k, 0.0, need, samples, D_HOP, policy="silence")
    assert sess.stats.missed_chunks == 0 and sess.stats.late_samples == 0
    assert all(r.slack >= 0 for r in sess.records if r.slack is not None)
    assert_records_match(sess, predict(samples, D_HOP, t_f, k, 0.0, need), t_f, k)

    if need > 0:
        sess, _ = run_timed(t_f, k, 0.0, need - HALF_SAMPLE, samples, D_HOP)
        assert sess.stats.missed_chunks > 0


def test_default_policy_follows_the_clock():
    from stemstream.stream.clock import WallClock

    assert session(shared_model(0, 1)).policy == "late"
    assert Session(shared_model(0, 1), shared_codec(), clock=WallClock()).policy == "silence"


# ------------------------------------------------------------------- input rates/channels
def test_44k1_stereo_input_runs_through_the_codec_rate_path():
    from stemstream import audio as audio_lib

    model = shared_model(0, 4)
    seconds = 0.8
    t = np.arange(int(seconds * 44100)) / 44100
    left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise(t.shape[0], seed=1)
    right = 0.3 * np.sin(2 * np.pi * 330 * t)
    stereo = np.stack([left, right], axis=1).astype(np.float32)  # [n, 2]

    live = session(model, input_sample_rate=44100, temperature=0.0)
    out = run_blocks(live, stereo, [441, 1024, 37])
    assert live.codec_samples_in == math.ceil(stereo.shape[0] * SR / 44100)
    assert live.heard_frames == math.ceil(live.codec_samples_in / HOP)
    assert out.shape == (live.output_length,) == (live.codec_samples_in,)
    assert np.isfinite(out).all() and 0 < np.abs(out).max() <= 0.75 + 1e-6

    mono = stereo.mean(axis=1)
    pre = audio_lib.resample(mono, 44100, SR)
    direct = session(model, temperature=0.0)
    out_pre = run_blocks(direct, pre, [HOP])
    assert out_pre.shape == out.shape
    assert np.isfinite(out_pre).all()
    assert direct.codec_samples_in == live.codec_samples_in
    # the two resamplers differ slightly, so codes (and output) may differ in places, but the
    # same input mostly gives the same frames
    same = np.isclose(out, out_pre, atol=1e-5).reshape(-1, HOP).all(axis=1)
    assert same.mean() > 0.5

    wide = session(model, input_sample_rate=44100, temperature=0.0, output_sample_rate=48000)
    out48 = run_blocks(wide, stereo, [512])
    assert wide.out_rate == 48000
    assert out48.shape == (wide.output_length,) == (math.ceil(wide.codec_samples_in * 12),)
    assert np.isfinite(out48).all()
    # the 48 kHz stream is exactly the 4 kHz stream through the (split-invariant) resampler
    up = StreamResampler(SR, 48000)
    assert np.array_equal(out48, np.concatenate([up.process(out), up.flush()]))


def test_torch_blocks_and_empty_blocks_are_accepted():
    model = shared_model(0, 1)
    wave = WAVE[: HOP * 12]
    ref = run_blocks(session(model, temperature=0.0), wave, [HOP])
    sess = session(model, temperature=0.0)
    outs = []
    for i in range(0, wave.shape[0], HOP):
        outs.append(sess.push(torch.from_numpy(wave[i : i + HOP])))
        outs.append(sess.push(np.zeros(0, np.float32)))
        outs.append(sess.push(np.zeros((0, 2), np.float32)))
    outs.append(sess.finish())
    assert np.array_equal(np.concatenate(outs)[: sess.output_length], ref)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_block_is_refused_and_the_session_is_unchanged(bad_value):
    model = shared_model(0, 4)
    wave = noise(HOP * 15 + 3)
    sizes = [HOP + 3]
    ref = run_blocks(session(model, temperature=1.0), wave, sizes)

    sess = session(model, temperature=1.0)
    outs, pos, i = [], 0, 0
    while pos < wave.shape[0]:
        if i in (0, 3, 6):
            bad = wave[pos : pos + 50].copy()
            bad[7] = bad_value
            before = (
                sess.samples_in,
                sess.codec_samples_in,
                sess.state.step,
                sess.stats.pushes,
                sess.generator.get_state().clone(),
            )
            with pytest.raises(StreamError, match=r"NaN/Inf"):
                sess.push(bad)
            with pytest.raises(StreamError, match=r"NaN/Inf"):
                sess.push(np.stack([bad, bad], axis=1))  # stereo too
            after = (
                sess.samples_in,
                sess.codec_samples_in,
                sess.state.step,
                sess.stats.pushes,
                sess.generator.get_state(),
            )
            assert before[:4] == after[:4] and torch.equal(before[4], after[4])
        outs.append(sess.push(wave[pos : pos + sizes[0]]))
        pos += sizes[0]
        i += 1
    outs.append(sess.finish())
    assert np.array_equal(np.concatenate(outs)[: sess.output_length], ref)


def test_malformed_blocks_raise_stream_error():
    sess = session(shared_model(0, 1))
    for bad in (np.zeros((2, 3, 4)), np.array(["a", "b"]), np.zeros(()), [[1.0, 2.0], [3.0]]):
        with pytest.raises(StreamError):
            sess.push(bad)
    assert sess.samples_in == 0 and sess.stats.pushes == 0


def test_finish_ends_the_stream_and_reset_reproduces_the_first_run():
    model = shared_model(2, 4)
    wave = noise(HOP * 9 + 11, seed=4)
    sess = session(model, temperature=1.0, seed=3)
    first = run_blocks(sess, wave, [57])
    first_stats = dataclasses.asdict(sess.stats)
    assert sess.finished
    with pytest.raises(StreamError, match="finish"):
        sess.push(wave[:10])
    assert sess.finish().shape == (0,)  # finishing twice is harmless
    sess.reset()
    assert not sess.finished and sess.stats.chunks == 0 and sess.records == []
    second = run_blocks(sess, wave, [57])
    assert np.array_equal(first, second)
    assert dataclasses.asdict(sess.stats) == first_stats


def test_finishing_a_stream_that_heard_nothing_gives_empty_audio():
    """Stop before any audio came (a live user pressing stop at once, an empty file): the
    stream ends cleanly with no output."""
    model = shared_model(0, 1)
    sess = session(model)
    assert sess.finish().shape == (0,)
    assert sess.finished and sess.output_length == 0

    sess = session(model)
    sess.push(np.zeros(0, np.float32))
    out = sess.finish()
    assert out.dtype == np.float32 and sess.finished

    assert run_blocks(session(model), np.zeros(0, np.float32), [HOP]).shape == (0,)


# -------------------------------------------------------------------------------- report
def test_report_is_consistent_with_the_records(tmp_path):
    k = 4
    sess, _ = run_timed(0, k, 1.5 * FRAME * k, 12 * FRAME + HALF_SAMPLE, 40 * D_HOP, 50)
    report = sess.report()
    for key in (
        "rtf",
        "chunks",
        "missed_chunks",
        "frame_ms",
        "slack_ms",
        "records",
        "time_split_s",
        "recency_gap_frames",
    ):
        assert key in report, key
    for q in ("p50", "p95", "p99"):
        assert report["frame_ms"][q] is not None
    records = sess.records
    assert report["chunks"] == len(records) == len(report["records"])
    assert report["missed_chunks"] == sum(r.missed for r in records) > 0
    assert report["late_samples"] == sum(r.late_samples for r in records)
    frame_ms = [(r.end - r.start) * 1e3 / k for r in records]
    for q in (50, 95, 99):
        assert report["frame_ms"][f"p{q}"] == pytest.approx(np.percentile(frame_ms, q))
    compute = sum(report["time_split_s"].values())
    assert report["rtf"] == pytest.approx(compute / (40 * D_HOP / D_SR))
    # only the model costs time here (the K - 1 tail steps too)
    assert report["rtf"] == pytest.approx(sess.stats.chunks * 1.5 * FRAME * k / (40 * FRAME))
    assert report["slack_ms"]["min"] == pytest.approx(
        1e3 * min(r.slack for r in records if r.slack is not None)
    )
    assert report["recency_gap_frames"] == (k - 1) / 2
    assert report["clock"] == "virtual" and report["policy"] == "late"

    path = write_report(report, tmp_path / "sub" / "report.json")
    assert json.loads(path.read_text())["chunks"] == report["chunks"]
    png = plot_timeline(report, tmp_path / "timeline.png")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_records_and_pushes_are_bounded_but_counters_stay_exact():
    sess = session(shared_model(0, 1), keep_records=5)
    run_blocks(sess, noise(HOP * 30), [HOP])
    assert len(sess.records) == 5 and len(sess.pushes) == 5
    assert sess.stats.chunks == 30 + K - 1 and sess.stats.pushes == 31
    assert [r.index for r in sess.records] == list(range(sess.stats.chunks - 5, sess.stats.chunks))
    report = sess.report()
    assert report["records_kept"] == 5 and report["chunks"] == sess.stats.chunks
