// The page's audio: the microphone through the capture worklet (16 kHz PCM16 frames
// out) and replies through the playback worklet (a gap-free queue that can be flushed
// at once). Owns the AudioContext and the microphone; close() releases both.

import { WIRE_RATE } from './resampler.js';

// Why the microphone could not be opened, in words a user can act on.
export class MicrophoneError extends Error {}

function microphoneError(error) {
  switch (error && error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return new MicrophoneError(
        'Microphone access was refused. Allow it for this page (the icon in the address bar) and press Start again.');
    case 'NotFoundError':
    case 'OverconstrainedError':
      return new MicrophoneError('No microphone was found. Connect one and press Start again.');
    case 'NotReadableError':
      return new MicrophoneError('The microphone is in use by another program, or the system blocked it.');
    default:
      if (!navigator.mediaDevices) {
        return new MicrophoneError(
          'This browser only allows the microphone on https:// pages or on localhost.');
      }
      return new MicrophoneError(`The microphone could not be opened (${error && error.message}).`);
  }
}

export class AudioIO {
  // Call from a click handler: browsers start an AudioContext only after a gesture.
  // handlers: onFrame(ArrayBuffer, peak), onPlayback(message from the playback worklet).
  static async open(handlers) {
    const context = new AudioContext({ latencyHint: 'interactive' });
    let stream;
    try {
      await context.resume();
      stream = await navigator.mediaDevices.getUserMedia({
        // Echo cancellation keeps hearken's own voice out of the microphone (it would
        // interrupt itself). The browser's noise suppression and gain control stay off:
        // measured here, they clipped speech and smeared consonants enough to turn
        // "fox jumps" into a different word; the VAD and recogniser want the raw signal.
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      context.close();
      throw microphoneError(error);
    }
    try {
      await context.audioWorklet.addModule(new URL('./capture.worklet.js', import.meta.url));
      await context.audioWorklet.addModule(new URL('./playback.worklet.js', import.meta.url));
    } catch (error) {
      stream.getTracks().forEach((track) => track.stop());
      context.close();
      throw error;
    }
    return new AudioIO(context, stream, handlers);
  }

  constructor(context, stream, handlers) {
    this.context = context;
    this.stream = stream;
    const mono = { channelCount: 1, channelCountMode: 'explicit', channelInterpretation: 'speakers' };
    this.source = context.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(context, 'hearken-capture', { ...mono, numberOfOutputs: 1 });
    // The capture node outputs silence; connecting it to the destination keeps it pulled.
    this.source.connect(this.capture).connect(context.destination);
    this.capture.port.onmessage = (event) => handlers.onFrame(event.data.pcm, event.data.peak);
    this.playback = new AudioWorkletNode(context, 'hearken-playback', { numberOfInputs: 0, outputChannelCount: [1] });
    this.playback.connect(context.destination);
    this.playback.port.onmessage = (event) => handlers.onPlayback(event.data);
  }

  // Context samples → 16 kHz samples, the unit of hearkenStats.samplesPlayed.
  toWireSamples(contextSamples) {
    return contextSamples * WIRE_RATE / this.context.sampleRate;
  }

  // Seconds from a sample leaving the worklet to it reaching the speaker.
  outputLatency() {
    return (this.context.outputLatency || 0) + (this.context.baseLatency || 0);
  }

  play(pcm) {
    this.playback.port.postMessage({ pcm }, [pcm]);
  }

  mark(id) {
    this.playback.port.postMessage({ mark: id });
  }

  flush(reason) {
    this.playback.port.postMessage({ flush: reason });
  }

  close() {
    this.stream.getTracks().forEach((track) => track.stop());
    this.source.disconnect();
    this.capture.port.onmessage = null;
    this.playback.port.onmessage = null;
    return this.context.close();
  }
}
