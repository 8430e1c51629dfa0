// Reply playback on the audio thread: a queue of 16 kHz PCM16 chunks, resampled to the
// context's rate as they arrive and played back to back, so consecutive frames join
// without gaps. The page controls it with messages:
//   {pcm: ArrayBuffer}  append audio
//   {mark: id}          report {reached: id} when the audio after it starts to sound
//   {flush: reason}     drop everything queued at once; answered with {flushed, dropped}
// and it reports {played, queued} (samples at the context's rate) about every 50 ms,
// and {idle: true} when the queue runs dry.

import { Resampler, WIRE_RATE } from './resampler.js';

// Render quanta (128 frames each) between reports: ~50 ms at 48 kHz.
const REPORT_EVERY = 20;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(WIRE_RATE, sampleRate);
    this.queue = [];
    this.head = 0;
    this.queued = 0;
    this.played = 0;
    this.quanta = 0;
    this.sounding = false;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message.pcm) {
      const pcm = new Int16Array(message.pcm);
      const floats = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
      const chunk = this.resampler.push(floats).slice();
      if (chunk.length > 0) {
        this.queue.push(chunk);
        this.queued += chunk.length;
      }
    } else if (message.mark !== undefined) {
      this.queue.push({ mark: message.mark });
    } else if (message.flush !== undefined) {
      const dropped = this.queued;
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.resampler.reset();
      this.port.postMessage({ flushed: message.flush, dropped, queued: 0 });
    }
  }

  process(_inputs, outputs) {
    const output = outputs[0];
    const out = output[0];
    let n = 0;
    while (n < out.length && this.queue.length > 0) {
      const item = this.queue[0];
      if (!(item instanceof Float32Array)) {
        // Reached when its first sample sounds, so not before that sample is here.
        if (this.queue.length === 1) break;
        this.port.postMessage({ reached: item.mark });
        this.queue.shift();
        continue;
      }
      const take = Math.min(out.length - n, item.length - this.head);
      out.set(item.subarray(this.head, this.head + take), n);
      n += take;
      this.head += take;
      if (this.head === item.length) {
        this.queue.shift();
        this.head = 0;
      }
    }
    out.fill(0, n);
    for (let c = 1; c < output.length; c++) output[c].set(out);
    this.played += n;
    this.queued -= n;
    if (n > 0) this.sounding = true;
    if (this.sounding && n < out.length) {
      this.sounding = false;
      this.port.postMessage({ idle: true, played: this.played, queued: 0 });
      this.played = 0;
    }
    if (++this.quanta >= REPORT_EVERY) {
      this.quanta = 0;
      if (this.played > 0) {
        this.port.postMessage({ played: this.played, queued: this.queued });
        this.played = 0;
      }
    }
    return true;
  }
}

registerProcessor('hearken-playback', PlaybackProcessor);
