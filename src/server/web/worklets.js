// Audio worklets of the turnflow page: `capture` turns the microphone into 20 ms frames of
// 16 kHz PCM16; `player` plays the agent's PCM16 through a small jitter buffer and reports
// how much it has played, which is what the server keeps as heard.

const TARGET_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.acc = 0;
    this.count = 0;
    this.pos = 0; // fractional position within the current output sample's window
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    // Box-filter decimation: each output sample is the mean of the input samples in its window,
    // which removes most of what would alias at 16 kHz.
    for (let i = 0; i < input.length; i++) {
      this.acc += input[i];
      this.count += 1;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        const v = Math.max(-1, Math.min(1, this.acc / this.count));
        this.frame[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
        this.acc = 0;
        this.count = 0;
        if (this.filled === FRAME) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(FRAME);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.sourceRate = 16000;
    this.ring = new Float32Array(sampleRate * 20); // up to 20 s of agent audio
    this.read = 0;
    this.write = 0;
    this.primed = false;
    this.prebuffer = Math.round(sampleRate * 0.06); // 60 ms absorbs network jitter
    this.playedContext = 0; // context-rate samples played since the last report
    this.played = 0; // source-rate samples played in the session
    this.sinceReport = 0;
    this.lastPlayed = -1;
    this.lastBuffered = -1;
    this.port.onmessage = (event) => {
      const data = event.data;
      if (data instanceof ArrayBuffer) this.push(new Int16Array(data));
      else if (data.type === 'rate') this.sourceRate = data.rate;
      else if (data.type === 'clear') this.clear();
    };
  }

  buffered() {
    return (this.write - this.read + this.ring.length) % this.ring.length;
  }

  push(pcm) {
    // Linear interpolation from the agent's rate to the context's.
    const ratio = this.sourceRate / sampleRate;
    const out = Math.floor(pcm.length / ratio);
    for (let i = 0; i < out; i++) {
      const x = i * ratio;
      const j = Math.floor(x);
      const a = pcm[j] / 0x8000;
      const b = (j + 1 < pcm.length ? pcm[j + 1] : pcm[j]) / 0x8000;
      this.ring[this.write] = a + (b - a) * (x - j);
      this.write = (this.write + 1) % this.ring.length;
      if (this.write === this.read) this.read = (this.read + 1) % this.ring.length;
    }
  }

  clear() {
    this.read = this.write;
    this.primed = false;
    this.report(true);
  }

  report(always) {
    const ratio = this.sourceRate / sampleRate;
    this.played += this.playedContext * ratio;
    this.playedContext = 0;
    this.sinceReport = 0;
    const played = Math.floor(this.played);
    const buffered = Math.floor(this.buffered() * ratio);
    // Only news goes to the server: nothing while the agent is silent.
    if (!always && played === this.lastPlayed && buffered === this.lastBuffered) return;
    this.lastPlayed = played;
    this.lastBuffered = buffered;
    this.port.postMessage({ played, buffered });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.primed && this.buffered() >= this.prebuffer) this.primed = true;
    for (let i = 0; i < out.length; i++) {
      if (this.primed && this.read !== this.write) {
        out[i] = this.ring[this.read];
        this.read = (this.read + 1) % this.ring.length;
        this.playedContext += 1;
      } else {
        out[i] = 0;
        this.primed = false;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) this.report(false);
    return true;
  }
}

registerProcessor('capture', Capture);
registerProcessor('player', Player);
