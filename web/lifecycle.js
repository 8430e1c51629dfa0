// The lifecycle panel: follows `GET /v1/events` (server-sent events, one JSON object
// per `data:` line) and lists each conversation's `connection_started` and
// `connection_disconnected` with its reason, newest first. The browser's EventSource
// reconnects by itself when the stream drops.

import { endpoint } from './session.js';

// Rows kept in the panel.
const MAX_ROWS = 40;

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

export class LifecyclePanel {
  constructor({ list, status }) {
    this.list = list;
    this.status = status;
    this.source = null;
    this.mine = null;
  }

  // Highlight rows of the page's own conversation.
  setConversation(id) {
    this.mine = id;
    for (const row of this.list.children) {
      row.classList.toggle('mine', row.dataset.conversation === id);
    }
  }

  follow(token) {
    if (this.source) this.source.close();
    this.source = new EventSource(endpoint('v1/events', { token }));
    this.source.onopen = () => {
      this.status.textContent = 'following';
      this.status.dataset.following = '';
    };
    this.source.onerror = () => {
      delete this.status.dataset.following;
      this.status.textContent = this.source.readyState === EventSource.CLOSED
        ? 'not available (auth or subscriber limit)'
        : 'reconnecting…';
    };
    this.source.onmessage = (message) => this.add(JSON.parse(message.data));
  }

  add(event) {
    const row = document.createElement('li');
    const started = event.type === 'connection_started';
    row.dataset.testid = 'event';
    row.dataset.type = event.type;
    row.dataset.conversation = event.conversation_id;
    if (!started) row.dataset.reason = event.reason;
    row.classList.toggle('mine', event.conversation_id === this.mine);

    const kind = document.createElement('span');
    kind.className = `kind ${started ? 'started' : 'ended'}`;
    kind.textContent = started ? 'started' : 'disconnected';
    const id = document.createElement('code');
    id.textContent = event.conversation_id.slice(0, 8);
    id.title = event.conversation_id;
    const detail = document.createElement('span');
    detail.className = 'detail';
    detail.textContent = started
      ? `${event.client_id}${event.resumed ? ' · resumed' : ''}`
      : event.reason;
    const time = document.createElement('time');
    time.textContent = clock(event.timestamp_ms);
    row.append(kind, id, detail, time);
    this.list.prepend(row);
    while (this.list.children.length > MAX_ROWS) this.list.lastElementChild.remove();
  }
}
