// AudioWorklet side of the stemstream page (loaded with audioWorklet.addModule).
//
// One processor handles both directions so that they share one clock: the input it captures
// and the accompaniment it plays advance by the same render quantum. The server's output
// sample n goes with input sample n; it is played `delay` samples after input sample n was
// captured (delay = the server's latency L plus a small jitter margin). Accompaniment that
// arrives after its time is skipped rather than played late, so it stays locked to the
// player instead of drifting further behind after every network hiccup.
//
// Messages from the main thread:
//   {type: 'start', delay}      start capturing and start the playback clock
//   {type: 'samples', samples}  a Float32Array of accompaniment, in stream order
//   {type: 'flush'}             stop capturing: post the partial block, then {type: 'flushed'}
//   {type: 'end'}               no more accompaniment: post {type: 'drained'} once it is played
//   {type: 'close'}             let the processor be garbage collected
// Messages to the main thread:
//   {type: 'block', samples}    a Float32Array of captured mono input (ownership transferred)
//   {type: 'flushed'}, {type: 'drained'}

// The most recent samples of a stream, addressed by their absolute index in the stream.
class SampleWindow {
  constructor(capacity) {
    this.buf = new Float32Array(capacity);
    this.end = 0; // absolute index just past the newest sample
  }

  push(samples) {
    for (let i = 0; i < samples.length; i++) this.buf[(this.end + i) % this.buf.length] = samples[i];
    this.end += samples.length;
  }

  // Copies absolute indices [start, start + out.length) into out, zero where not held.
  read(start, out) {
    const first = Math.max(0, this.end - this.buf.length);
    for (let j = 0; j < out.length; j++) {
      const i = start + j;
      out[j] = i >= first && i < this.end ? this.buf[i % this.buf.length] : 0;
    }
  }
}

class DuplexProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    // Capture: fixed-size blocks keep the message rate steady (~100/s at 512 samples).
    this.blockSize = opts.blockSize || 512;
    this.block = new Float32Array(this.blockSize);
    this.fill = 0;
    this.capturing = false;
    // Playback: `pos` is the index of the accompaniment sample due now (negative: not yet).
    // 30 s of room: far more than L (at most 10 s) plus any network backlog worth playing.
    this.window = new SampleWindow(Math.round((opts.bufferSeconds || 30) * sampleRate));
    this.playing = false;
    this.pos = 0;
    this.ended = false;
    this.alive = true;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === 'start') {
      this.capturing = this.playing = true;
      this.pos = -Math.max(0, Math.round(msg.delay || 0));
    } else if (msg.type === 'samples') {
      this.window.push(msg.samples);
    } else if (msg.type === 'flush') {
      this.capturing = false;
      if (this.fill > 0) this.postBlock(this.block.slice(0, this.fill));
      this.fill = 0;
      this.port.postMessage({ type: 'flushed' });
    } else if (msg.type === 'end') {
      this.ended = true;
    } else if (msg.type === 'close') {
      this.alive = false;
    }
  }

  postBlock(block) {
    this.port.postMessage({ type: 'block', samples: block }, [block.buffer]);
  }

  capture(channels) {
    // The node has channelCount 1 ('explicit'), so the graph already mixed the input down to
    // mono. No channel at all means nothing is connected (e.g. the file has ended).
    const x = channels && channels[0];
    if (!x) return;
    for (let i = 0; i < x.length; i++) {
      this.block[this.fill++] = Number.isFinite(x[i]) ? x[i] : 0; // the server refuses NaN/Inf
      if (this.fill === this.blockSize) {
        this.postBlock(this.block); // transferred, so start a fresh one
        this.block = new Float32Array(this.blockSize);
        this.fill = 0;
      }
    }
  }

  process(inputs, outputs) {
    if (this.capturing) this.capture(inputs[0]);
    const out = outputs[0] && outputs[0][0];
    if (out && this.playing) {
      this.window.read(this.pos, out);
      this.pos += out.length;
      if (this.ended && this.pos >= this.window.end) {
        this.playing = false;
        this.port.postMessage({ type: 'drained' });
      }
    } else if (out) {
      out.fill(0);
    }
    return this.alive;
  }
}

registerProcessor('stemstream-duplex', DuplexProcessor);
