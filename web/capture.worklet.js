// Microphone capture on the audio thread: the context's rate → 16 kHz, float → PCM16
// little-endian (the platform's order, little-endian on every browser hearken targets),
// cut into 20 ms frames of 320 samples. Each frame goes to the page (transferred, not
// copied) with its peak level, for the meter; the page sends it as one binary
// WebSocket message.

import { Resampler, WIRE_RATE } from './resampler.js';

// 20 ms at 16 kHz: the frame size the protocol recommends.
const FRAME_SAMPLES = 320;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, WIRE_RATE);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const samples = this.resampler.push(channel);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.peak = Math.max(this.peak, Math.abs(s));
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === FRAME_SAMPLES) {
        this.port.postMessage({ pcm: this.frame.buffer, peak: this.peak }, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.fill = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}

registerProcessor('hearken-capture', CaptureProcessor);
