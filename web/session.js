// One conversation with the server over `/v1/ws`: connects (resuming by conversation
// id), tells refusals apart in plain words, and reconnects after a lost connection so
// the conversation resumes. Browsers hide the HTTP status of a refused WebSocket
// upgrade, so a refusal is diagnosed by asking the same URL again with a plain GET:
// hearken refuses it the same way, before any upgrade, with the status and a code.

// Waits between reconnect attempts (ms); then the page gives up and says so.
const RECONNECT_DELAYS = [500, 1000, 2000, 4000, 8000, 8000];

// Close codes (README: Protocol in brief) that end the conversation for good.
const FINAL_CLOSES = {
  1008: 'The server closed the connection: too many messages (flood limit).',
  4001: 'This conversation was continued in another tab or client.',
};

const CLOSE_WORDS = {
  1001: 'The server is restarting.',
  1011: 'The server hit an error in this conversation.',
  1013: 'The server is still ending the previous connection of this conversation.',
  4000: 'The server closed an idle connection.',
};

export function endpoint(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value) url.searchParams.set(key, value);
  }
  return url;
}

function wsUrl(params) {
  const url = endpoint('v1/ws', params);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

// Why the upgrade was refused: {message, retry, auth}.
async function diagnose(params) {
  let response;
  try {
    response = await fetch(endpoint('v1/ws', params), { cache: 'no-store' });
  } catch {
    return { message: 'Cannot reach the server. Is hearken running?', retry: true };
  }
  let code = '';
  try {
    code = (await response.json()).error.code;
  } catch {
    // Not one of hearken's refusals (e.g. the upgrade would have been accepted).
  }
  switch (response.status) {
    case 401:
      return { message: 'The token was not accepted. Enter the right one and press Start.', auth: true };
    case 503:
      if (code === 'server_full' || code === 'per_ip_limit') {
        return { message: 'The server is full (HTTP 503): too many conversations right now. Try again shortly.' };
      }
      if (code === 'not_ready') return { message: 'The server is still loading its models. Try again in a moment.', retry: true };
      if (code === 'shutting_down') return { message: 'The server is shutting down.', retry: true };
      return { message: `The server refused the connection (HTTP 503${code ? `, ${code}` : ''}).` };
    case 400:
      if (code) return { message: `The server refused the connection: ${code}.` };
      return { message: 'The connection failed.', retry: true };
    default:
      return { message: `The server refused the connection (HTTP ${response.status}).`, retry: true };
  }
}

export class Session {
  // handlers: onEvent(json), onAudio(ArrayBuffer), onStatus({kind, message}) where kind
  // is 'connecting' | 'open' | 'reconnecting' | 'closed' | 'failed'.
  constructor({ conversationId, token, handlers }) {
    this.conversationId = conversationId || null;
    this.token = token || null;
    this.handlers = handlers;
    this.socket = null;
    this.stopped = false;
    this.attempt = 0;
    this.timer = null;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  params() {
    return { conversation_id: this.conversationId, token: this.token, client_id: 'demo-page' };
  }

  connect() {
    this.handlers.onStatus({ kind: this.attempt === 0 ? 'connecting' : 'reconnecting' });
    const socket = new WebSocket(wsUrl(this.params()));
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    let opened = false;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (message) => {
      if (typeof message.data === 'string') {
        const event = JSON.parse(message.data);
        if (event.type === 'session.started') {
          this.conversationId = event.conversation_id;
          this.attempt = 0;
          this.handlers.onStatus({ kind: 'open' });
        }
        this.handlers.onEvent(event);
      } else {
        this.handlers.onAudio(message.data);
      }
    };
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (!opened) {
        this.refused();
      } else {
        this.lost(close.code);
      }
    };
  }

  async refused() {
    const why = await diagnose(this.params());
    if (this.stopped) return;
    if (why.retry && this.scheduleRetry(why.message)) return;
    this.stopped = true;
    this.handlers.onStatus({ kind: 'failed', message: why.message, auth: why.auth });
  }

  lost(code) {
    if (FINAL_CLOSES[code]) {
      this.stopped = true;
      this.handlers.onStatus({ kind: 'failed', message: FINAL_CLOSES[code] });
      return;
    }
    const words = CLOSE_WORDS[code] || 'The connection to the server was lost.';
    if (!this.scheduleRetry(words)) {
      this.stopped = true;
      this.handlers.onStatus({ kind: 'failed', message: `${words} Reconnecting failed; press Start to try again.` });
    }
  }

  // Try again later, resuming the conversation; false once the attempts are used up.
  scheduleRetry(message) {
    if (this.attempt >= RECONNECT_DELAYS.length) return false;
    const delay = RECONNECT_DELAYS[this.attempt++];
    const resumes = this.conversationId ? ' The conversation will resume.' : '';
    this.handlers.onStatus({ kind: 'reconnecting', message: `${message} Reconnecting…${resumes}` });
    this.timer = setTimeout(() => this.connect(), delay);
    return true;
  }

  sendAudio(pcm) {
    if (!this.open) return false;
    this.socket.send(pcm);
    return true;
  }

  sendEvent(event) {
    if (this.open) this.socket.send(JSON.stringify(event));
  }

  // End the conversation from this side: a Close frame with 1000 (normal closure).
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onmessage = null;
      if (socket.readyState === WebSocket.CONNECTING) {
        socket.onopen = () => socket.close(1000, 'stop');
      } else {
        socket.close(1000, 'stop');
      }
    }
    this.handlers.onStatus({ kind: 'closed' });
  }
}
