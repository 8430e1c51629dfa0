// What the page shows: the state pill, errors and notices, the conversation id, the
// transcript view (one user turn, its reply and the reply's measured latency per row)
// and the audio counters. It only renders; app.js decides.

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}

// Server stage times (`latency_ms` of response.audio.started), in the order they happen.
const STAGES = [
  ['turn_decided', 'turn decided'],
  ['transcript', 'transcript'],
  ['first_token', 'first token'],
  ['first_clause', 'first clause'],
  ['first_audio', 'first audio sent'],
];

export class View {
  constructor() {
    this.turns = $('turns');
    this.replies = new Map();
  }

  state(name) {
    const pill = $('state');
    pill.textContent = name;
    pill.dataset.state = name.replace(/ /g, '-');
  }

  // Which controls work now; a new conversation can be begun only while stopped.
  buttons({ start, stop }) {
    $('start').disabled = !start;
    $('stop').disabled = !stop;
    $('forget').hidden = !start || !$('conversation').dataset.id;
  }

  // A problem (role alert) or, with `notice`, something that is being handled.
  message(text, notice = false) {
    const box = $('error');
    box.hidden = !text;
    box.textContent = text || '';
    box.classList.toggle('notice', notice);
  }

  tokenForm(visible) {
    $('token-form').hidden = !visible;
  }

  conversation(id, resumed) {
    $('conversation-label').textContent = id ? 'Conversation' : 'New conversation';
    $('conversation').textContent = id ? id.slice(0, 8) : '';
    $('conversation').title = id || '';
    $('conversation').dataset.id = id || '';
    $('resumed').hidden = resumed !== true;
    $('forget').hidden = !id || $('start').disabled;
  }

  level(peak) {
    $('level').style.transform = `scaleX(${Math.min(1, Math.sqrt(peak)).toFixed(3)})`;
  }

  stats(stats) {
    $('stat-frames').textContent = stats.framesSent;
    $('stat-played').textContent = (stats.samplesPlayed / 16000).toFixed(1);
    $('stat-turns').textContent = stats.turns;
  }

  clearTurns() {
    this.turns.replaceChildren();
    this.replies.clear();
    this.placeholder();
  }

  placeholder() {
    const empty = $('empty');
    if (empty) empty.hidden = this.turns.querySelector('.turn, .divider') !== null;
  }

  // A line between sessions of one conversation.
  divider(text) {
    this.turns.append(element('li', 'divider', text));
    this.placeholder();
  }

  // A new user turn; returns its row.
  addTurn(text, restored = false) {
    const row = element('li', 'turn');
    if (restored) row.classList.add('restored');
    if (text !== null) {
      const user = element('p', 'bubble user', text);
      user.dataset.testid = 'transcript';
      row.append(user);
    }
    this.turns.append(row);
    this.placeholder();
    row.scrollIntoView({ block: 'end', behavior: 'smooth' });
    return row;
  }

  // The reply `id` in `row`, made on first use.
  reply(row, id) {
    let reply = this.replies.get(id);
    if (!reply) {
      const box = element('div', 'bubble assistant');
      const text = element('p', 'text');
      text.dataset.testid = 'reply';
      box.append(text);
      row.append(box);
      reply = { box, text };
      this.replies.set(id, reply);
    }
    return reply;
  }

  replyText(row, id, delta) {
    const { text } = this.reply(row, id);
    text.textContent += delta;
    text.scrollIntoView({ block: 'end', behavior: 'smooth' });
  }

  // Mark a reply that was cut short (by the user's voice, or the server).
  interrupted(id) {
    const reply = this.replies.get(id);
    if (reply && !reply.box.classList.contains('cancelled')) {
      reply.box.classList.add('cancelled');
      reply.text.dataset.interrupted = 'true';
      reply.box.append(element('span', 'cut', 'interrupted'));
    }
  }

  // End of the user's speech → first reply sound heard, with the server's stage times.
  latency(row, id, ms, stages) {
    const { box } = this.reply(row, id);
    const line = element('p', 'latency');
    const value = element('span', 'value', seconds(ms));
    value.dataset.testid = 'latency';
    value.dataset.ms = String(Math.round(ms));
    line.append(value, document.createTextNode(' from the end of your speech to the first sound'));
    const known = STAGES.filter(([key]) => stages && stages[key] !== undefined);
    if (known.length > 0) {
      line.title = 'Server stages, from the end of your voice: '
        + known.map(([key, name]) => `${name} ${stages[key]} ms`).join(' · ');
      const server = element('span', 'server', ` · server ${stages.first_audio ?? '?'} ms`);
      line.append(server);
    }
    box.append(line);
  }
}
