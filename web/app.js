// The demo page's controller: Start opens the microphone and a session, Stop ends
// both; server events drive the state, the transcript view and playback. Barge-in
// (`vad.speech_started` while a reply sounds) and Stop flush the playback queue at
// once. The conversation id and its turns are kept in sessionStorage, so a reload
// resumes the conversation. Counters for people and tests: window.hearkenStats.

import { AudioIO, MicrophoneError } from './audio.js';
import { LifecyclePanel } from './lifecycle.js';
import { Session } from './session.js';
import { View } from './view.js';

const STORE_KEY = 'hearken.demo.conversation';
const TOKEN_KEY = 'hearken.demo.token';
// Turns kept in sessionStorage for the view after a reload (the server keeps its own).
const STORED_TURNS = 50;
// 20 ms frames whose capture times are kept for latency (a minute of audio).
const FRAME_TIMES_KEPT = 3000;
const FRAME_MS = 20;
// Frames kept while the socket is not open yet (or again), sent once it is: 3 s, so
// words spoken while the connection is made are heard, and no stale speech after that.
const BACKLOG_FRAMES = 150;
// Longest wait for the playback worklet to confirm Stop's flush before closing audio.
const STOP_FLUSH_WAIT_MS = 300;

const stats = {
  framesSent: 0, // 20 ms PCM16 frames sent to the server
  samplesPlayed: 0, // reply samples heard, at 16 kHz
  turns: 0, // user turns transcribed since the page loaded
  replies: 0, // replies whose audio started to sound
  bargeIns: 0, // replies cut because the user spoke
  flushes: [], // {reason: 'barge-in' | 'stop', droppedSamples} per flush
  queuedSamples: 0, // reply samples waiting in the playback queue, at 16 kHz
  discardedFrames: 0, // audio frames of a cut reply that arrived after the cut
  conversationId: null,
  resumed: null,
  state: 'off',
};
window.hearkenStats = stats;

const view = new View();
const auth = document.documentElement.dataset.auth === 'token';
const panel = new LifecyclePanel({
  list: document.getElementById('events'),
  status: document.getElementById('events-status'),
});

let audio = null;
let session = null;
// The current user turn's row in the view, and its stored record.
let turn = null;
let record = null;
// Frames captured and not sent yet: {pcm, at: performance.now() when captured}.
let backlog = [];
// Capture time of each frame sent on the current socket, by index (its audio_ms / 20).
let frameTimes = [];
let frameBase = 0;
let sentOn = null;
// When the user's last speech ended (ms, performance.now), for the next reply.
let speechEnd = null;
// Replies whose audio is marked in the playback queue: id → {row, speechEnd, stages}.
const pending = new Map();
// Whether binary frames belong to a reply being played (false after a cut).
let acceptingAudio = false;
let sounding = false;
// The reply whose audio is arriving or sounding.
let speaking = null;
let stopFlushed = null;

function setState(name) {
  stats.state = name;
  view.state(name);
}

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY)) || { id: null, turns: [] };
  } catch {
    return { id: null, turns: [] };
  }
}
const stored = load();

function save() {
  stored.turns = stored.turns.slice(-STORED_TURNS);
  sessionStorage.setItem(STORE_KEY, JSON.stringify(stored));
}

function token() {
  return auth ? (document.getElementById('token').value.trim() || null) : null;
}

// The time the audio at `audioMs` of this session was captured.
function captureTime(audioMs) {
  const index = Math.floor(audioMs / FRAME_MS) - frameBase;
  const at = frameTimes[index];
  if (at === undefined) return null;
  return at - ((index + frameBase + 1) * FRAME_MS - audioMs);
}

function onFrame(pcm, peak) {
  view.level(peak);
  if (!session) return;
  backlog.push({ pcm, at: performance.now() });
  if (backlog.length > BACKLOG_FRAMES) backlog.shift();
  if (session.open) sendBacklog();
}

function sendBacklog() {
  if (sentOn !== session.socket) {
    // A new socket is a new server session: its audio clock starts at 0.
    sentOn = session.socket;
    frameTimes = [];
    frameBase = 0;
  }
  for (const frame of backlog) {
    session.sendAudio(frame.pcm);
    stats.framesSent += 1;
    frameTimes.push(frame.at);
  }
  backlog = [];
  if (frameTimes.length > FRAME_TIMES_KEPT) {
    const drop = frameTimes.length - FRAME_TIMES_KEPT;
    frameTimes = frameTimes.slice(drop);
    frameBase += drop;
  }
}

function onPlayback(message) {
  if (message.played !== undefined) {
    stats.samplesPlayed += Math.round(audio.toWireSamples(message.played));
    stats.queuedSamples = Math.round(audio.toWireSamples(message.queued));
    view.stats(stats);
  }
  if (message.flushed !== undefined) {
    stats.flushes.push({
      reason: message.flushed,
      droppedSamples: Math.round(audio.toWireSamples(message.dropped)),
    });
    stats.queuedSamples = 0;
    if (message.flushed === 'stop' && stopFlushed) stopFlushed();
  }
  if (message.reached !== undefined) {
    speaking = message.reached;
    const reply = pending.get(message.reached);
    pending.delete(message.reached);
    sounding = true;
    stats.replies += 1;
    if (stats.state !== 'user speaking') setState('speaking');
    if (reply && reply.speechEnd !== null) {
      const heard = performance.now() + audio.outputLatency() * 1000;
      const ms = heard - reply.speechEnd;
      view.latency(reply.row, message.reached, ms, reply.stages);
      if (reply.record) reply.record.latencyMs = Math.round(ms);
      save();
    }
  }
  if (message.idle) {
    sounding = false;
    if (stats.state === 'speaking' && !acceptingAudio) setState('listening');
  }
}

// Cut the reply that is sounding: the user is talking over it.
function bargeIn() {
  if (!sounding && !acceptingAudio) return;
  stats.bargeIns += 1;
  if (speaking) view.interrupted(speaking);
  speaking = null;
  acceptingAudio = false;
  sounding = false;
  pending.clear();
  audio.flush('barge-in');
}

function currentTurn() {
  if (!turn) {
    turn = view.addTurn(null);
    record = { user: null, reply: '' };
    stored.turns.push(record);
  }
  return turn;
}

function onEvent(event) {
  switch (event.type) {
    case 'session.started': {
      const earlier = stored.turns.length > 0;
      stats.conversationId = event.conversation_id;
      stats.resumed = event.resumed;
      if (stored.id !== event.conversation_id) stored.turns = [];
      stored.id = event.conversation_id;
      save();
      view.conversation(event.conversation_id, event.resumed);
      panel.setConversation(event.conversation_id);
      if (earlier) {
        view.divider(event.resumed
          ? 'Resumed: the server still has the conversation so far'
          : 'The server no longer had this conversation: it starts afresh');
      }
      setState('listening');
      break;
    }
    case 'vad.speech_started':
      bargeIn();
      setState('user speaking');
      break;
    case 'vad.speech_stopped':
      speechEnd = captureTime(event.audio_ms);
      setState('thinking');
      break;
    case 'transcript.final':
      if (!event.text.trim()) {
        if (!sounding) setState('listening');
        break;
      }
      stats.turns += 1;
      turn = view.addTurn(event.text);
      record = { user: event.text, reply: '' };
      stored.turns.push(record);
      save();
      view.stats(stats);
      break;
    case 'response.text.delta':
      view.replyText(currentTurn(), event.response_id, event.text);
      record.reply += event.text;
      save();
      break;
    case 'response.done':
      if (event.cancelled) view.interrupted(event.response_id);
      save();
      if (!sounding && !acceptingAudio && stats.state === 'thinking') setState('listening');
      break;
    case 'response.audio.started':
      acceptingAudio = true;
      speaking = event.response_id;
      pending.set(event.response_id, {
        row: currentTurn(),
        record,
        speechEnd,
        stages: event.latency_ms,
      });
      speechEnd = null;
      audio.mark(event.response_id);
      break;
    case 'response.audio.done':
      if (event.cancelled) view.interrupted(event.response_id);
      acceptingAudio = false;
      if (!sounding && stats.state === 'speaking') setState('listening');
      break;
    case 'error':
      view.message(`The server reported: ${event.message} (${event.code}).`);
      break;
    default:
      break;
  }
}

function onAudio(pcm) {
  if (acceptingAudio && audio) {
    audio.play(pcm);
  } else {
    stats.discardedFrames += 1;
  }
}

function onStatus(status) {
  switch (status.kind) {
    case 'connecting':
      setState('connecting');
      break;
    case 'open':
      view.message(null);
      break;
    case 'reconnecting':
      acceptingAudio = false;
      if (audio) audio.flush('connection-lost');
      setState('reconnecting');
      if (status.message) view.message(status.message, true);
      break;
    case 'failed':
      view.message(status.message);
      if (status.auth) {
        sessionStorage.removeItem(TOKEN_KEY);
        view.tokenForm(true);
      }
      release();
      break;
    default:
      break;
  }
}

// Close the microphone and the audio context; the page is idle again.
function release() {
  const closing = audio;
  audio = null;
  session = null;
  backlog = [];
  sentOn = null;
  acceptingAudio = false;
  sounding = false;
  speaking = null;
  pending.clear();
  stats.queuedSamples = 0;
  if (closing) closing.close();
  view.level(0);
  setState('off');
  view.buttons({ start: true, stop: false });
}

async function start() {
  view.message(null);
  const secret = token();
  if (auth && !secret) {
    view.tokenForm(true);
    view.message('This server needs an access token: enter it above, then press Start.');
    return;
  }
  if (secret) sessionStorage.setItem(TOKEN_KEY, secret);
  view.buttons({ start: false, stop: false });
  setState('connecting');
  try {
    audio = await AudioIO.open({ onFrame, onPlayback });
  } catch (error) {
    audio = null;
    view.message(error instanceof MicrophoneError ? error.message : `Audio could not start: ${error.message}`);
    release();
    return;
  }
  if (auth) panel.follow(secret);
  view.tokenForm(false);
  session = new Session({
    conversationId: stored.id,
    token: secret,
    handlers: { onEvent, onAudio, onStatus },
  });
  session.connect();
  view.buttons({ start: false, stop: true });
}

async function stop() {
  if (!session) return;
  view.buttons({ start: false, stop: false });
  const flushed = new Promise((resolve) => {
    stopFlushed = resolve;
    setTimeout(resolve, STOP_FLUSH_WAIT_MS);
  });
  audio.flush('stop');
  session.close();
  await flushed;
  stopFlushed = null;
  release();
}

function forget() {
  if (session) return;
  stored.id = null;
  stored.turns = [];
  turn = null;
  record = null;
  sessionStorage.removeItem(STORE_KEY);
  stats.conversationId = null;
  stats.resumed = null;
  view.conversation(null, null);
  view.clearTurns();
}

function restore() {
  if (auth) {
    const secret = sessionStorage.getItem(TOKEN_KEY);
    if (secret) document.getElementById('token').value = secret;
    view.tokenForm(!secret);
    if (secret) panel.follow(secret);
  } else {
    panel.follow(null);
  }
  view.conversation(stored.id, null);
  for (const earlier of stored.turns) {
    const row = view.addTurn(earlier.user, true);
    if (earlier.reply) {
      view.replyText(row, `restored-${stored.turns.indexOf(earlier)}`, earlier.reply);
    }
  }
  if (stored.id) {
    document.getElementById('conversation-label').textContent = 'Press Start to resume conversation';
  }
  setState('off');
  view.buttons({ start: true, stop: false });
}

document.getElementById('start').addEventListener('click', start);
document.getElementById('stop').addEventListener('click', stop);
document.getElementById('forget').addEventListener('click', forget);
document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  start();
});
restore();
