// Drives hearken's demo page in Debian's Chromium (headless, playwright-core), with a
// WAV file as the microphone, and prints what the page showed as one JSON line
// (`RESULT {...}`) for tests/demo_page.rs to judge. Every wait is bounded; a wait that
// runs out fails the run with the page's state and a screenshot beside the result.
//
//   node tests/browser/demo.mjs --url http://127.0.0.1:PORT/ --audio mic.wav \
//        --scenario conversation|resume|screenshot --out DIR [--turns N]
//
// conversation: Start; the spoken turn's transcript, its reply text and sound; the
//   second utterance cuts the reply (barge-in); screenshot; Stop while the next reply
//   sounds; the lifecycle panel shows the start and the disconnect.
// resume: Start; reload while the reply sounds; Start again resumes the conversation.
// refusals (with --token): a wrong token, then a full server, in plain words.
// screenshot: Start, --turns N (default 1) turns and their replies, screenshot (the
//   README's, against a server with the embedded model), Stop.

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const CHROMIUM = process.env.HEARKEN_CHROMIUM || '/usr/bin/chromium';
// Upper bound of one wait: generous, so a slow CI machine never flakes; a broken page
// still fails well within the test's time.
const WAIT_MS = Number(process.env.HEARKEN_BROWSER_WAIT_MS || 60000);
// 0.5 s of reply audio at 16 kHz.
const HALF_SECOND = 8000;

const log = (...parts) => console.error('[demo.mjs]', ...parts);

mkdirSync(args.out, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'hearken-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    // %noloop: the file plays once per microphone opening, then silence.
    `--use-file-for-fake-audio-capture=${args.audio}%noloop`,
  ],
});

const origin = new URL(args.url).host;
const requests = [];
const problems = [];
const page = context.pages()[0] || (await context.newPage());
page.on('request', (request) => requests.push(request.url()));
page.on('websocket', (socket) => requests.push(socket.url()));
page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
// The browser's own lines about failed requests are kept apart: a refusal the page
// handles (401, 503) is one of them, and only the refusals scenario expects any.
const networkErrors = [];
page.on('console', (message) => {
  if (message.type() !== 'error') return;
  const text = message.text();
  const network = /^(Failed to load resource|WebSocket connection to)/.test(text);
  (network ? networkErrors : problems).push(`console: ${text}`);
});

const stats = () => page.evaluate(() => JSON.parse(JSON.stringify(window.hearkenStats)));

async function until(what, predicate, arg) {
  log('waiting:', what);
  try {
    await page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}: ${error.message.split('\n')[0]}`);
  }
}

// The page's own view of the conversation, through its data-testid hooks.
async function snapshot() {
  return page.evaluate(() => {
    const texts = (id) => [...document.querySelectorAll(`[data-testid="${id}"]`)].map((n) => n.textContent);
    return {
      state: document.querySelector('[data-testid="state"]').textContent,
      transcripts: texts('transcript'),
      replies: texts('reply'),
      interrupted: [...document.querySelectorAll('[data-testid="reply"]')].map((n) => n.dataset.interrupted === 'true'),
      latencies: [...document.querySelectorAll('[data-testid="latency"]')].map((n) => Number(n.dataset.ms)),
      resumedBadge: !document.querySelector('[data-testid="resumed"]').hidden,
      error: document.querySelector('[data-testid="error"]').hidden ? null : document.querySelector('[data-testid="error"]').textContent,
      events: [...document.querySelectorAll('[data-testid="event"]')].map((n) => ({
        type: n.dataset.type, conversation: n.dataset.conversation, reason: n.dataset.reason || null,
      })),
      states: window.__states || [],
      stats: JSON.parse(JSON.stringify(window.hearkenStats)),
    };
  });
}

// Record every state the pill shows, in order.
async function watchStates() {
  await page.evaluate(() => {
    window.__states = [];
    const pill = document.querySelector('[data-testid="state"]');
    const note = () => {
      const last = window.__states[window.__states.length - 1];
      if (pill.textContent !== last) window.__states.push(pill.textContent);
    };
    new MutationObserver(note).observe(pill, { childList: true, characterData: true, subtree: true });
    note();
  });
}

async function open() {
  await page.goto(args.url);
  await until('the Start button', () => !document.querySelector('[data-testid="start"]').disabled);
  // The lifecycle panel must be subscribed before the session starts, or it misses it.
  await until('the lifecycle panel to follow /v1/events',
    () => document.getElementById('events-status').textContent === 'following');
  await watchStates();
}

const ownDisconnect = (id) => [...document.querySelectorAll('[data-testid="event"]')]
  .some((n) => n.dataset.conversation === id && n.dataset.type === 'connection_disconnected');

// Stop, watch the teardown reach the lifecycle panel, and add the page's final state
// to what the scenario saw.
async function stopAndFinish(seen) {
  const { conversationId } = await stats();
  await page.click('[data-testid="stop"]');
  await until('Stop to flush playback', () => window.hearkenStats.flushes.some((f) => f.reason === 'stop')
    && window.hearkenStats.state === 'off');
  await until('the disconnect in the lifecycle panel', ownDisconnect, conversationId);
  return { ...seen, final: await snapshot() };
}

async function conversation() {
  await open();
  await page.click('[data-testid="start"]');
  await until('the first transcript', () => document.querySelectorAll('[data-testid="transcript"]').length >= 1);
  await until('reply text', () => [...document.querySelectorAll('[data-testid="reply"]')].some((n) => n.textContent.trim()));
  await until('0.5 s of reply audio played', (half) => window.hearkenStats.samplesPlayed >= half, HALF_SECOND);
  const firstReply = await snapshot();
  await until('the second utterance to cut the reply (barge-in)', () => window.hearkenStats.bargeIns >= 1
    && window.hearkenStats.flushes.some((f) => f.reason === 'barge-in'));
  const afterBargeIn = await snapshot();
  await until('the second transcript', () => document.querySelectorAll('[data-testid="transcript"]').length >= 2);
  await until('the second reply to sound', () => window.hearkenStats.replies >= 2
    && window.hearkenStats.state === 'speaking' && window.hearkenStats.queuedSamples > 0);
  await page.screenshot({ path: join(args.out, 'demo-conversation.png') });
  return stopAndFinish({ firstReply, afterBargeIn, beforeStop: await snapshot() });
}

async function resume() {
  await open();
  await page.click('[data-testid="start"]');
  await until('the first transcript', () => document.querySelectorAll('[data-testid="transcript"]').length >= 1);
  await until('the reply to sound', () => window.hearkenStats.samplesPlayed > 0);
  const before = await snapshot();
  log('reloading mid-reply');
  await page.reload();
  await open();
  const reloaded = await snapshot();
  await page.click('[data-testid="start"]');
  await until('session.started', () => window.hearkenStats.resumed !== null);
  await until('a transcript after the reload', () => window.hearkenStats.turns >= 1);
  await until('its reply text', () => document.querySelectorAll('[data-testid="reply"]').length
    > document.querySelectorAll('.turn.restored [data-testid="reply"]').length);
  return stopAndFinish({ before, reloaded, after: await snapshot() });
}

async function screenshot() {
  await open();
  await page.click('[data-testid="start"]');
  const turns = Number(args.turns || 1);
  await until(`${turns} replies with their latency`,
    (n) => document.querySelectorAll('[data-testid="latency"]').length >= n, turns);
  await until('the reply to finish', () => window.hearkenStats.state === 'listening');
  await page.screenshot({ path: join(args.out, 'demo-page.png') });
  return stopAndFinish({ shown: await snapshot() });
}

// Against a server with auth on and its one session slot taken: a wrong token, then the
// right one, each refusal in plain words.
async function refusals() {
  await page.goto(args.url);
  await until('the token form', () => !document.getElementById('token-form').hidden);
  await page.fill('#token', 'wrong');
  await page.click('[data-testid="start"]');
  await until('the wrong token to be refused', () => /token/.test(document.querySelector('[data-testid="error"]').textContent)
    && !document.querySelector('[data-testid="start"]').disabled);
  const wrongToken = await page.textContent('[data-testid="error"]');
  await page.fill('#token', args.token);
  await page.click('[data-testid="start"]');
  await until('the full server to refuse', () => /full/.test(document.querySelector('[data-testid="error"]').textContent)
    && !document.querySelector('[data-testid="start"]').disabled);
  return { wrongToken, serverFull: await snapshot() };
}

const scenarios = { conversation, resume, screenshot, refusals };
let exitCode = 0;
try {
  const scenario = scenarios[args.scenario];
  if (!scenario) throw new Error(`unknown --scenario ${args.scenario}`);
  const result = await scenario();
  const foreign = requests.filter((url) => new URL(url).host !== origin);
  console.log(`RESULT ${JSON.stringify({ ...result, requests, foreign, problems, networkErrors })}`);
} catch (error) {
  exitCode = 1;
  log('FAILED:', error.message);
  try {
    log('page state:', JSON.stringify(await snapshot()));
    await page.screenshot({ path: join(args.out, `failed-${args.scenario}.png`) });
  } catch (inner) {
    log('could not capture the page:', inner.message);
  }
  log('problems:', JSON.stringify(problems), 'network errors:', JSON.stringify(networkErrors));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
