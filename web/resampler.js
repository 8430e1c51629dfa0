// Streaming sample-rate conversion for the two audio worklets (capture: the audio
// context's rate → 16 kHz; playback: 16 kHz → the context's rate).
//
// A windowed-sinc filter, low-passed below the lower rate's Nyquist frequency, so that
// 48 kHz → 16 kHz does not fold hissing consonants into the speech band (plain linear
// interpolation does, and the recogniser hears it). Coefficients are tabulated for
// PHASES fractional positions: each output sample costs 2 × half multiply-adds and no
// trigonometry (about 1.3 M per second either way, nothing for a worklet).

// The rate of audio on the wire, both ways: what the worklets convert to and from.
export const WIRE_RATE = 16000;

const PHASES = 256;
// Zero crossings of the sinc on each side: the filter's sharpness.
const ZERO_CROSSINGS = 12;
// Pass band as a fraction of the lower Nyquist frequency: 7.2 kHz of 8 kHz at 16 kHz.
const PASS = 0.9;

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

// Blackman window over u in [-1, 1].
function blackman(u) {
  if (Math.abs(u) >= 1) return 0;
  return 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
}

export class Resampler {
  constructor(inRate, outRate) {
    // Input samples per output sample.
    this.step = inRate / outRate;
    const cutoff = Math.min(1, outRate / inRate) * PASS;
    this.half = Math.ceil(ZERO_CROSSINGS / cutoff);
    this.width = 2 * this.half;
    this.table = new Float32Array((PHASES + 1) * this.width);
    for (let p = 0; p <= PHASES; p++) {
      const frac = p / PHASES;
      const row = this.table.subarray(p * this.width, (p + 1) * this.width);
      let sum = 0;
      for (let k = 0; k < this.width; k++) {
        const x = k - this.half + 1 - frac;
        row[k] = cutoff * sinc(cutoff * x) * blackman(x / this.half);
        sum += row[k];
      }
      // Unity gain at DC for every phase.
      for (let k = 0; k < this.width; k++) row[k] /= sum;
    }
    this.buf = new Float32Array(4096);
    this.out = new Float32Array(0);
    this.reset();
  }

  // Forget the signal so far (a flushed reply must not ring into the next one).
  reset() {
    this.buf.fill(0);
    // `half` zeros of history, so the first output lines up with the first input.
    this.len = this.half;
    this.pos = this.half;
  }

  // Feed input samples; returns the output samples they complete. The returned array
  // is reused by the next call: copy or consume it first.
  push(input) {
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;

    const most = Math.ceil(input.length / this.step) + 2;
    if (this.out.length < most) this.out = new Float32Array(most);
    let n = 0;
    const { buf, table, width, half } = this;
    while (Math.floor(this.pos) + half < this.len) {
      const i0 = Math.floor(this.pos);
      const phase = Math.round((this.pos - i0) * PHASES);
      const base = phase * width;
      const first = i0 - half + 1;
      let acc = 0;
      for (let k = 0; k < width; k++) acc += table[base + k] * buf[first + k];
      this.out[n++] = acc;
      this.pos += this.step;
    }
    // Keep only the history the next output needs.
    const drop = Math.floor(this.pos) - half + 1;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    return this.out.subarray(0, n);
  }
}
