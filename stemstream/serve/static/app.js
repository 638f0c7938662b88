// stemstream page: streams microphone or file audio to /ws and plays the accompaniment back.
// The protocol is in docs/serve.md; the audio-thread side is /static/capture-worklet.js.

const JITTER_S = 0.1; // played this long after the server's latency L, to absorb network jitter
const CAPTURE_BLOCK = 512; // input samples per binary message (~11 ms at 48 kHz)
const SILENCE_MS = 30000; // waiting for ready, or for done after the stop, fails after this
const FFT_SIZE = 2048;
// Output sample n goes with input sample n (the output is exactly as long as the input,
// docs/serve.md): L delays playback, it is not padding, so the mix needs no offset.
const MIX_OFFSET = 0;
// Float32Array and Int16Array use the platform's byte order, which is little-endian (as the
// protocol and WAV want) on every platform browsers run on: samples go out as they are.
const TOKEN = new URLSearchParams(location.search).get('token');

// Every element with an id, camelCased: ui.startMic is #start-mic.
const ui = {};
for (const el of document.querySelectorAll('[id]')) ui[el.id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = el;

// Read by automated tests: sample counts of the current (or last) session.
const counters = (window.stemstream = { received: 0, sent: 0 });

let health = null; // the /health answer
let audio = null; // the AudioContext and the nodes all sessions share
let session = null; // the session in progress, if any
let lingering = null; // worklet node of a finished session still playing its tail
let result = null; // recordings of the last session, for the downloads

// ------------------------------------------------------------------ page state

const setState = (state) => { document.body.dataset.state = state; };
const setStatus = (text) => { ui.status.textContent = text; };
// a model's file name, not the server's path to it
const fileName = (path) => String(path).split(/[\\/]/).pop();

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

function updateButtons() {
  const idle = !!health && ui.instrument.options.length > 0 && !session;
  for (const el of [ui.instrument, ui.startMic, ui.file]) el.disabled = !idle;
  ui.drop.classList.toggle('disabled', !idle);
  ui.stop.disabled = !session || session.phase === 'stopping';
}

function describe(err) {
  if (err && err.name === 'NotAllowedError') return 'Microphone access was denied.';
  if (err && err.name === 'NotFoundError') return 'No microphone was found.';
  return (err && err.message) || String(err);
}

async function loadHealth() {
  try {
    const res = await fetch('/health', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const first = !health;
    health = await res.json();
    if (first) {
      const names = health.instruments && health.instruments.length ? health.instruments : [health.default_instrument];
      ui.instrument.replaceChildren(...names.filter(Boolean).map(
        (name) => new Option(name, name, false, name === health.default_instrument)));
      showError('');
      setStatus('Ready: pick an instrument, then play from the microphone or an audio file.');
    }
    const needsToken = health.token_required && !TOKEN;
    ui.serverInfo.textContent = [`model ${fileName(health.model)}`, `codec ${health.codec}`,
      `sessions ${health.sessions}/${health.capacity}`,
      ...(needsToken ? ['this server needs ?token=… in the page address'] : [])].join(' · ');
    ui.serverInfo.classList.toggle('warn', needsToken);
  } catch (err) {
    if (!health) { // needed to start; later refreshes only update the session count
      showError(`Cannot reach the server (/health: ${describe(err)}). Retrying…`);
      setTimeout(loadHealth, 5000);
    }
  }
  updateButtons();
}

// ------------------------------------------------------------------ audio graph

async function ensureAudio() {
  if (audio) return audio;
  if (!window.isSecureContext) {
    throw new Error('Browsers only allow audio capture on a secure page: open it over https or on localhost.');
  }
  const ctx = new AudioContext({ latencyHint: 'interactive' });
  try {
    await ctx.audioWorklet.addModule('/static/capture-worklet.js');
  } catch (err) {
    ctx.close();
    throw new Error(`Cannot load the audio worklet: ${describe(err)}`);
  }
  const analyser = () => new AnalyserNode(ctx, {
    fftSize: FFT_SIZE, smoothingTimeConstant: 0, minDecibels: -100, maxDecibels: -20,
  });
  audio = { ctx, inGain: new GainNode(ctx), accGain: new GainNode(ctx), inAnalyser: analyser(), accAnalyser: analyser() };
  audio.inGain.connect(ctx.destination);
  audio.accGain.connect(ctx.destination);
  applyGains();
  setupSpectrogram(ctx.sampleRate);
  return audio;
}

// Browsers hold audio back until the user has interacted with the page (a file dropped on a
// fresh page may not count): say so rather than wait silently.
async function resumeAudio(ctx) {
  await Promise.race([ctx.resume(), new Promise((resolve) => setTimeout(resolve, 1000))]);
  if (ctx.state !== 'running') throw new Error('The browser holds audio back: click the page, then start again.');
}

// Balance: the centre plays both at full level; each side fades the other stream out.
function balanceGains() {
  const b = Number(ui.balance.value) / 100;
  return { input: Math.min(1, 2 * (1 - b)), acc: Math.min(1, 2 * b) };
}

function applyGains() {
  const g = balanceGains();
  ui.balanceValue.textContent = `input ${Math.round(g.input * 100)}% · accompaniment ${Math.round(g.acc * 100)}%`;
  if (!audio) return;
  const t = audio.ctx.currentTime;
  audio.inGain.gain.setTargetAtTime(ui.monitor.checked ? g.input : 0, t, 0.02);
  audio.accGain.gain.setTargetAtTime(g.acc, t, 0.02);
}

function toMono(buffer) {
  const n = buffer.numberOfChannels;
  if (n === 1) return buffer;
  const mono = new AudioBuffer({ length: buffer.length, sampleRate: buffer.sampleRate, numberOfChannels: 1 });
  const out = mono.getChannelData(0);
  for (let c = 0; c < n; c++) buffer.getChannelData(c).forEach((v, i) => { out[i] += v / n; });
  return mono;
}

function closeNode(node) {
  node.port.onmessage = null;
  node.port.postMessage({ type: 'close' });
  node.disconnect();
  if (lingering === node) lingering = null;
}

// ------------------------------------------------------------------ sessions

function startMic() {
  startSession('mic', 'microphone', async (s, a) => {
    ui.monitor.checked = false; // a live microphone on the speakers would feed back
    if (!navigator.mediaDevices) throw new Error('This browser gives no microphone access here.');
    s.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    s.source = new MediaStreamAudioSourceNode(a.ctx, { mediaStream: s.stream });
  });
}

function startFile(file) {
  startSession('file', file.name, async (s, a) => {
    setStatus(`Decoding ${file.name}…`);
    // decodeAudioData resamples to the context's rate, the rate the server is told.
    const decoded = await a.ctx.decodeAudioData(await file.arrayBuffer()).catch((err) => {
      throw new Error(`Cannot decode ${file.name}: ${describe(err)}`);
    });
    ui.monitor.checked = true; // the file is safe on the speakers, and that is how it is heard
    s.source = new AudioBufferSourceNode(a.ctx, { buffer: toMono(decoded) });
  });
}

// prepare(s, audio) sets s.source (and s.stream for the microphone).
async function startSession(kind, label, prepare) {
  if (session || !health) return;
  showError('');
  clearResult();
  if (lingering) closeNode(lingering);
  const s = {
    kind, label, instrument: ui.instrument.value, phase: 'connecting', finished: false,
    ws: null, node: null, source: null, stream: null, timer: 0, serverError: null,
    inputBlocks: [], outputBlocks: [], sent: 0, received: 0, latency: 0, sr: 0, t0: 0, delay: 0,
  };
  session = s;
  counters.sent = counters.received = 0;
  for (const el of ui.stats.querySelectorAll('dd')) setStat(el.id.slice(5), '–'); // id: stat-<name>
  setState('connecting');
  updateButtons();
  setStatus(`Preparing the ${label}…`);
  try {
    const a = await ensureAudio();
    await resumeAudio(a.ctx);
    if (!s.finished) await prepare(s, a);
    applyGains(); // prepare chose the monitor default
    if (s.finished) return stopInput(s); // cancelled during a permission prompt or decoding
    s.node = new AudioWorkletNode(a.ctx, 'stemstream-duplex', {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      channelCount: 1, channelCountMode: 'explicit', channelInterpretation: 'speakers', // mono mixdown
      processorOptions: { blockSize: CAPTURE_BLOCK },
    });
    s.node.port.onmessage = (event) => onWorklet(s, event.data);
    s.node.connect(a.accGain);
    s.node.connect(a.accAnalyser);
    openSocket(s, a.ctx.sampleRate);
  } catch (err) {
    fail(s, describe(err));
  }
}

function openSocket(s, sampleRate) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '';
  const ws = (s.ws = new WebSocket(`${scheme}//${location.host}/ws${query}`));
  ws.binaryType = 'arraybuffer';
  setStatus('Connecting to the server…');
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: 'start', instrument: s.instrument, sample_rate: sampleRate, channels: 1 }));
    setStatus(`Waiting for the server to start the ${s.instrument} session…`);
  };
  ws.onmessage = (event) => onSocketMessage(s, event);
  ws.onclose = (event) => {
    const detail = `close code ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
    fail(s, s.serverError ? `${s.serverError} (${detail})` : `The connection to the server ended unexpectedly (${detail}).`);
  };
  ws.onerror = () => {}; // a close event with the code always follows
  watch(s);
}

const wsOpen = (s) => s.ws && s.ws.readyState === WebSocket.OPEN;

// Fails the session if the server stays silent for SILENCE_MS while the page waits on it.
function watch(s) {
  clearTimeout(s.timer);
  s.timer = setTimeout(() => fail(s, s.phase === 'connecting'
    ? 'The server did not answer the start message in time.'
    : 'The server went silent before the end of the stream.'), SILENCE_MS);
}

function onSocketMessage(s, event) {
  if (s.finished) return;
  if (s.phase === 'stopping') watch(s); // a backlog may take long, but it keeps arriving
  if (typeof event.data !== 'string') { // accompaniment: float32 mono, in order
    const samples = new Float32Array(event.data, 0, event.data.byteLength >> 2);
    s.outputBlocks.push(samples);
    counters.received = s.received += samples.length;
    return s.node.port.postMessage({ type: 'samples', samples });
  }
  let msg;
  try {
    msg = JSON.parse(event.data);
  } catch {
    return; // the protocol only sends JSON text
  }
  if (msg.type === 'ready') onReady(s, msg);
  else if (msg.type === 'stats') showStats(s, msg);
  else if (msg.type === 'done') onDone(s); // the page leaves its report to the server's log
  else if (msg.type === 'error') {
    // The close (with its code) follows; show the message right away anyway.
    s.serverError = String(msg.message || 'unknown error');
    showError(s.serverError);
    setState('error');
  }
}

function onReady(s, msg) {
  if (s.phase !== 'connecting') return;
  clearTimeout(s.timer);
  s.sr = Number(msg.sample_rate);
  if (Math.round(s.sr) !== Math.round(audio.ctx.sampleRate)) {
    return fail(s, `The server answered at ${msg.sample_rate} Hz, but the page runs at ${audio.ctx.sampleRate} Hz.`);
  }
  s.latency = Number(msg.latency) || 0;
  s.phase = 'streaming';
  loadHealth(); // the session count now includes this session
  // The worklet starts its playback clock together with the capture; see capture-worklet.js.
  s.delay = Math.round((s.latency + JITTER_S) * s.sr);
  s.t0 = audio.ctx.currentTime;
  s.node.port.postMessage({ type: 'start', delay: s.delay });
  for (const dest of [s.node, audio.inGain, audio.inAnalyser]) s.source.connect(dest);
  if (s.kind === 'file') {
    s.source.onended = () => requestStop(s, 'The file has ended');
    s.source.start();
  }
  const ms = (s.latency * 1000).toFixed(0);
  setStat('latency', `${ms} ms`);
  setState('streaming');
  updateButtons();
  setStatus(`Streaming the ${s.label}: ${msg.model ? fileName(msg.model) : 'the model'} plays ${msg.instrument || s.instrument}, `
    + `heard ${ms} + ${JITTER_S * 1000} ms later.`);
}

function onWorklet(s, msg) {
  if (msg.type === 'block') {
    if (s.finished || !wsOpen(s)) return;
    s.ws.send(msg.samples);
    s.inputBlocks.push(msg.samples);
    counters.sent = s.sent += msg.samples.length;
  } else if (msg.type === 'flushed') {
    // Port messages keep their order, so every captured block has been sent: end the stream.
    if (!s.finished && wsOpen(s)) s.ws.send(JSON.stringify({ type: 'stop' }));
  } else if (msg.type === 'drained') {
    closeNode(s.node);
  }
}

function requestStop(s, reason) {
  if (!s || s.finished) return;
  if (s.phase === 'connecting') { // nothing was streamed yet: just give the connection up
    end(s, false);
    setState('idle');
    setStatus('Cancelled.');
  } else if (s.phase === 'streaming') {
    s.phase = 'stopping';
    updateButtons();
    setStatus(`${reason}: waiting for the rest of the accompaniment…`);
    stopInput(s);
    s.node.port.postMessage({ type: 'flush' }); // answered by 'flushed', which sends the stop
    watch(s);
  }
}

function onDone(s) {
  end(s, true);
  buildResult(s, false);
  setStatus(`Done: ${(s.received / s.sr).toFixed(1)} s of ${s.instrument} for ${(s.sent / s.sr).toFixed(1)} s of input.`);
  setState('done'); // last, so that the download links are ready when the state says so
  setTimeout(() => s.ws.close(), 5000); // the server closes first; this covers one that does not
}

function fail(s, message) {
  if (s.finished) return;
  end(s, false);
  if (s.sr && (s.inputBlocks.length || s.outputBlocks.length)) buildResult(s, true);
  showError(message);
  setStatus('Stopped because of an error.');
  setState('error');
}

// Ends a session; drain: let the worklet play the accompaniment it still holds.
function end(s, drain) {
  if (s.finished) return;
  s.finished = true;
  clearTimeout(s.timer);
  if (!drain && s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000);
  stopInput(s);
  if (s.node && drain) {
    s.node.port.postMessage({ type: 'end' });
    lingering = s.node;
  } else if (s.node) {
    closeNode(s.node);
  }
  if (session === s) session = null;
  updateButtons();
  loadHealth(); // refreshes the session count
}

function stopInput(s) {
  if (s.source && s.kind === 'file') {
    s.source.onended = null;
    try { s.source.stop(); } catch { /* never started */ }
  }
  if (s.source) s.source.disconnect();
  if (s.stream) s.stream.getTracks().forEach((track) => track.stop());
  s.source = s.stream = null;
}

// ------------------------------------------------------------------ stats

function setStat(name, text, cls = '') {
  const el = document.getElementById(`stat-${name}`);
  el.textContent = text;
  el.className = cls;
}

function showStats(s, m) {
  const num = (v) => typeof v === 'number' && Number.isFinite(v);
  const ms = (v) => [num(v) ? `${v.toFixed(0)} ms` : '–', !num(v) ? '' : v < 0 ? 'late' : 'good'];
  setStat('slack', ...ms(m.slack_ms));
  setStat('min-slack', ...ms(m.min_slack_ms));
  setStat('missed', `${m.missed ?? '–'} / ${m.chunks ?? '–'}`, m.missed > 0 ? 'late' : '');
  setStat('rtf', num(m.rtf) ? m.rtf.toFixed(2) : '–');
  setStat('seconds', num(m.seconds) ? `${m.seconds.toFixed(1)} s` : '–');
  // Accompaniment received but not yet due here; negative: it arrives after its playing time.
  const playhead = (audio.ctx.currentTime - s.t0) * s.sr - s.delay;
  if (s.sr && playhead > 0) setStat('buffer', ...ms((s.received - playhead) / s.sr * 1000));
}

// ------------------------------------------------------------------ downloads

function concat(blocks) {
  const out = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
  blocks.reduce((offset, b) => { out.set(b, offset); return offset + b.length; }, 0);
  return out;
}

// Mono 16-bit PCM WAV (the most widely readable kind) with a hand-written RIFF header.
function encodeWav(samples, sampleRate) {
  const rate = Math.round(sampleRate);
  const pcm = Int16Array.from(samples, (v) => Math.round(Math.max(-1, Math.min(1, v || 0)) * 32767));
  const header = new DataView(new ArrayBuffer(44));
  const fields = [ // [byte size, chunk id or little-endian number], in file order
    [4, 'RIFF'], [4, 36 + pcm.byteLength], [4, 'WAVE'], [4, 'fmt '], [4, 16], // fmt chunk of 16 bytes:
    [2, 1], [2, 1], [4, rate], [4, rate * 2], [2, 2], [2, 16], // PCM, mono, rate, byte rate, frame, bits
    [4, 'data'], [4, pcm.byteLength],
  ];
  let at = 0;
  for (const [size, value] of fields) {
    if (typeof value === 'string') [...value].forEach((ch, i) => header.setUint8(at + i, ch.charCodeAt(0)));
    else if (size === 4) header.setUint32(at, value, true);
    else header.setUint16(at, value, true);
    at += size;
  }
  return new Blob([header, pcm], { type: 'audio/wav' }); // Int16Array is little-endian here
}

function buildResult(s, partial) {
  const base = s.kind === 'mic' ? 'microphone' : s.label.replace(/\.[^.]+$/, '');
  result = {
    input: concat(s.inputBlocks), stem: concat(s.outputBlocks), sr: s.sr,
    name: `${base}-${s.instrument}`.replace(/[^\w.-]+/g, '_'), note: partial ? ', partial' : '',
  };
  s.inputBlocks = s.outputBlocks = [];
  setLink(ui.downloadStem, encodeWav(result.stem, result.sr), `${result.name}-stem.wav`,
    `Accompaniment stem (${(result.stem.length / result.sr).toFixed(1)} s${result.note})`);
  updateMixLink();
  ui.downloads.hidden = false;
}

function updateMixLink() {
  if (!result) return;
  const { input, stem, sr } = result;
  const g = balanceGains();
  const mix = new Float32Array(Math.max(input.length, stem.length - MIX_OFFSET, 0));
  input.forEach((v, i) => { mix[i] = g.input * v; });
  for (let i = 0; i + MIX_OFFSET < stem.length; i++) mix[i] += g.acc * stem[i + MIX_OFFSET];
  // Both streams at full level can exceed 1: scale the mix down rather than clip it.
  const peak = mix.reduce((p, v) => Math.max(p, Math.abs(v)), 0);
  if (peak > 1) mix.forEach((v, i) => { mix[i] = v / peak; });
  setLink(ui.downloadMix, encodeWav(mix, sr), `${result.name}-mix.wav`, `Mix (${(mix.length / sr).toFixed(1)} s, `
    + `input ${Math.round(g.input * 100)}%, accompaniment ${Math.round(g.acc * 100)}%${result.note})`);
}

function setLink(link, blob, filename, text) {
  if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  link.textContent = text;
  link.hidden = false;
}

function clearResult() {
  for (const link of [ui.downloadStem, ui.downloadMix]) {
    if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
    link.removeAttribute('href');
    link.hidden = true;
  }
  ui.downloads.hidden = true;
  result = null;
}

// ------------------------------------------------------------------ spectrogram

// Two rows (input on top, accompaniment below) on a log frequency axis from 40 Hz, scrolled
// one pixel per animation frame; the picture freezes between sessions.
const spectro = {
  g: ui.spectrogram.getContext('2d'),
  bins: new Uint8Array(FFT_SIZE / 2),
  // Level 0..255 to RGBA: black, purple, red, yellow.
  colours: Array.from({ length: 256 },
    (_, v) => [Math.min(255, 2 * v), Math.max(0, 2 * v - 255), v < 128 ? v : 255 - v, 255]),
};

function setupSpectrogram(sampleRate) {
  const { width, height } = ui.spectrogram;
  const rows = (spectro.rowHeight = (height - 1) >> 1); // one divider line between the rows
  const lo = 40;
  const hi = Math.min(16000, sampleRate / 2);
  const bin = (f) => Math.min(FFT_SIZE / 2, Math.floor(f / (sampleRate / FFT_SIZE)));
  spectro.bands = []; // FFT bin range of each pixel row, lowest frequency first
  for (let k = 0; k < rows; k++) {
    const b0 = Math.min(FFT_SIZE / 2 - 1, bin(lo * (hi / lo) ** (k / rows)));
    spectro.bands.push([b0, Math.max(b0 + 1, bin(lo * (hi / lo) ** ((k + 1) / rows)))]);
  }
  spectro.column = spectro.g.createImageData(1, height);
  spectro.column.data.set([90, 90, 90, 255], rows * 4); // the divider
  spectro.g.fillStyle = '#000';
  spectro.g.fillRect(0, 0, width, height);
  requestAnimationFrame(drawSpectrogram);
}

function paintRow(analyser, top) {
  const { bins, bands, rowHeight, colours } = spectro;
  analyser.getByteFrequencyData(bins);
  for (let k = 0; k < rowHeight; k++) {
    let v = 0; // the loudest bin of the band, so that narrow peaks stay visible
    for (let b = bands[k][0]; b < bands[k][1]; b++) v = Math.max(v, bins[b]);
    spectro.column.data.set(colours[v], (top + rowHeight - 1 - k) * 4);
  }
}

function drawSpectrogram() {
  requestAnimationFrame(drawSpectrogram);
  if (!session && !lingering) return;
  const { width, height } = ui.spectrogram;
  spectro.g.drawImage(ui.spectrogram, 1, 0, width - 1, height, 0, 0, width - 1, height);
  paintRow(audio.inAnalyser, 0);
  paintRow(audio.accAnalyser, spectro.rowHeight + 1);
  spectro.g.putImageData(spectro.column, width - 1, 0);
}

// ------------------------------------------------------------------ wiring

ui.startMic.addEventListener('click', startMic);
ui.stop.addEventListener('click', () => requestStop(session, 'Stopped'));
ui.file.addEventListener('change', () => {
  const file = ui.file.files[0];
  ui.file.value = ''; // so that picking the same file again is still a change
  if (file) startFile(file);
});
ui.balance.addEventListener('input', applyGains);
ui.balance.addEventListener('change', updateMixLink); // on release: re-encoding takes a moment
ui.monitor.addEventListener('change', applyGains);
ui.drop.addEventListener('dragover', () => ui.drop.classList.toggle('over', !ui.file.disabled));
ui.drop.addEventListener('dragleave', () => ui.drop.classList.remove('over'));
ui.drop.addEventListener('drop', (event) => {
  ui.drop.classList.remove('over');
  const file = event.dataTransfer.files[0];
  if (file && !ui.file.disabled) startFile(file);
});
// Without this a dropped file makes the browser leave the page (and the session).
window.addEventListener('dragover', (event) => event.preventDefault());
window.addEventListener('drop', (event) => event.preventDefault());

setState('idle');
applyGains();
updateButtons();
loadHealth();
