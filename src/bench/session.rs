//! One streaming bench session: connect, wait for the server's first event, send the
//! shared audio loop on a fixed real-time schedule (in the protocol's framing, see
//! `protocol.rs`), and time every server event against the moment the audio it names
//! was sent. The writer and the reader run as two halves of one task, so a
//! send held up by backpressure never delays the timestamp of an arriving event. Replies
//! (text, `response.audio.started`, audio frames) are paired with the speech they answer
//! by a [`ReplyTracker`] and timed from its voice end; the server's own stage times of a
//! reply (`latency_ms`) are recorded as they come. Every session of a run records into
//! one [`Shared`] window (it lives here, below the launcher that creates it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::{interval_at, sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::audio_src::FRAME_MS;
use super::protocol::{Heard, Protocol, Reader, RealtimeTurn};
use super::replies::{take_stop, ReplyNote, ReplyStages, ReplyTracker};
use super::stats::{Hist, Window};
use super::wsconn::{self, stopped};

/// Frames of send times kept per session: 60 s, far beyond any VAD or STT delay.
const SEND_LOG_FRAMES: usize = 3_000;
/// Frames between two merges of a session's send-slip histogram into the shared window.
const SLIP_FLUSH_FRAMES: u64 = 50;
/// Speech stops remembered while waiting for their transcripts.
const MAX_PENDING_STOPS: usize = 16;
/// Bound on waiting for the server's Close echo.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side VAD hysteresis (ms), to tell the server's delay from the wait it must do.
#[derive(Debug, Clone, Copy)]
pub struct Hysteresis {
    pub min_speech_ms: u64,
    pub min_silence_ms: u64,
}

/// One session's orders.
pub struct StreamPlan {
    pub url: String,
    pub protocol: Protocol,
    /// Turn detection a Realtime session asks for.
    pub turn: RealtimeTurn,
    /// The audio loop, one message per 20 ms frame in the protocol's framing.
    pub audio: Arc<Vec<Message>>,
    /// First frame of the loop this session sends (sessions start at different words).
    pub offset: usize,
    /// Time between two frames: 20 ms divided by the speed factor.
    pub period: Duration,
    pub hysteresis: Hysteresis,
    /// How long to wait for trailing transcripts after `audio.end`.
    pub drain: Duration,
    pub shared: Arc<Shared>,
    pub stop: watch::Receiver<bool>,
}

/// What every session of a run shares.
pub struct Shared {
    pub window: Mutex<Window>,
    pub live: AtomicU64,
    pub run_start: Instant,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            window: Mutex::new(Window::default()),
            live: AtomicU64::new(0),
            run_start: Instant::now(),
        })
    }

    pub fn with_window<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        f(&mut self.window.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// State the writer and reader halves share.
#[derive(Default)]
struct State {
    /// Index of the first frame in `sent`.
    first_frame: u64,
    sent: VecDeque<Instant>,
    streaming: bool,
    /// Arrival time and `audio_ms` of `vad.speech_stopped` events awaiting a transcript.
    pending_stops: VecDeque<(Instant, u64)>,
    /// Between `vad.speech_started` and `vad.speech_stopped`: `audio.end` will flush a
    /// segment, so the drain waits for its transcript.
    in_speech: bool,
    replies: ReplyTracker,
    closed_by_server: bool,
    close_deadline: Option<Instant>,
}

impl State {
    /// When the frame holding the audio at `audio_ms` was sent; the last frame sent when
    /// the position lies beyond it (an event can only name audio already sent).
    fn sent_at(&self, audio_ms: u64) -> Option<Instant> {
        let frame = audio_ms / FRAME_MS;
        let last = self.first_frame + self.sent.len() as u64;
        if frame < self.first_frame || self.sent.is_empty() {
            return None;
        }
        let index = frame.min(last - 1) - self.first_frame;
        self.sent.get(index as usize).copied()
    }
}

/// Run one session to its end, recording into the shared window.
pub async fn run(plan: StreamPlan) {
    let shared = Arc::clone(&plan.shared);
    let ws = match wsconn::open_until(&plan.url, plan.protocol.ready_event()).await {
        Ok(ws) => ws,
        Err(wsconn::OpenError::Refused(refusal)) if refusal.is_limit() => {
            return shared.with_window(|w| w.reject(refusal.to_string()))
        }
        Err(error) => return shared.with_window(|w| w.fail(error.to_string())),
    };
    shared.with_window(|w| w.sessions_started += 1);
    shared.live.fetch_add(1, Ordering::Relaxed);
    let (sink, stream) = ws.split();
    let state = Mutex::new(State {
        streaming: true,
        ..State::default()
    });
    let wake = Notify::new();
    tokio::join!(
        write_half(&plan, sink, &state, &wake),
        read_half(&plan, stream, &state, &wake)
    );
    shared.live.fetch_sub(1, Ordering::Relaxed);
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds from the start of the run to `now`, for the timelines.
fn run_time(plan: &StreamPlan, now: Instant) -> f64 {
    now.saturating_duration_since(plan.shared.run_start)
        .as_secs_f64()
}

/// Whether the drain after `audio.end` still expects something: a transcript, or the
/// first audio of the last reply.
fn draining(state: &Mutex<State>) -> bool {
    let st = lock(state);
    st.in_speech || !st.pending_stops.is_empty() || st.replies.awaiting_audio()
}

async fn write_half<S>(plan: &StreamPlan, mut sink: S, state: &Mutex<State>, wake: &Notify)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut stop = plan.stop.clone();
    let frames = &plan.audio;
    if let Some(hello) = plan.protocol.hello(plan.turn) {
        if sink.send(hello).await.is_err() {
            lock(state).streaming = false;
            lock(state).close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            return wake.notify_one();
        }
    }
    let start = Instant::now();
    let mut ticker = interval_at(start, plan.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut slip = Hist::default();
    let mut sent: u64 = 0;
    let flush = |slip: &mut Hist, frames: u64| {
        plan.shared.with_window(|w| {
            w.send_slip.merge(slip);
            w.frames_sent += frames;
        });
        slip.clear();
    };
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = ticker.tick() => {}
        }
        if lock(state).closed_by_server {
            break;
        }
        let frame = frames[(plan.offset + sent as usize) % frames.len()].clone();
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            result = sink.send(frame) => if result.is_err() { break },
        }
        let now = Instant::now();
        slip.record(now.saturating_duration_since(start + plan.period * sent as u32));
        sent += 1;
        {
            let mut st = lock(state);
            st.sent.push_back(now);
            if st.sent.len() > SEND_LOG_FRAMES {
                st.sent.pop_front();
                st.first_frame += 1;
            }
        }
        if sent.is_multiple_of(SLIP_FLUSH_FRAMES) {
            flush(&mut slip, SLIP_FLUSH_FRAMES);
        }
    }
    flush(&mut slip, sent % SLIP_FLUSH_FRAMES);
    lock(state).streaming = false;
    if !lock(state).closed_by_server {
        // Flush the last segment, give its transcript (and the first audio of its reply)
        // a bounded time, then leave politely.
        let in_speech = lock(state).in_speech;
        let ended = match plan.protocol.end_of_audio(in_speech) {
            Some(end) => sink.send(end).await.is_ok(),
            None => true,
        };
        if ended {
            let deadline = Instant::now() + plan.drain;
            while Instant::now() < deadline && draining(state) {
                sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = timeout(CLOSE_TIMEOUT, wsconn::send_close(&mut sink, "bench done")).await;
    }
    lock(state).close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    wake.notify_one();
}

async fn read_half<S>(plan: &StreamPlan, mut stream: S, state: &Mutex<State>, wake: &Notify)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let shared = &plan.shared;
    let mut reader = Reader::new(plan.protocol);
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let close_code = loop {
        let deadline = lock(state).close_deadline.unwrap_or(far);
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = wake.notified() => continue,
            _ = sleep_until(deadline) => break "no close echo".to_string(),
        };
        let now = Instant::now();
        match msg {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let heard = reader.read(&event);
                on_event(plan, &event, heard, now, state);
            }
            Some(Ok(Message::Binary(audio))) => {
                let notes = lock(state).replies.audio_frame(now);
                let elapsed = run_time(plan, now);
                shared.with_window(|w| {
                    Window::count(&mut w.events, "binary audio");
                    w.audio_frames_received += 1;
                    w.audio_bytes_received += audio.len() as u64;
                    for note in notes {
                        w.note_reply(note, elapsed);
                    }
                });
            }
            Some(Ok(Message::Close(frame))) => {
                break wsconn::code_of(frame);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break "none (no close frame)".to_string(),
        }
    };
    let (early, notes) = {
        let mut st = lock(state);
        let early = st.streaming;
        st.closed_by_server = true;
        (early, st.replies.finish())
    };
    let elapsed = run_time(plan, Instant::now());
    shared.with_window(|w| {
        Window::count(&mut w.close_codes, close_code.clone());
        if early {
            w.fail(format!("closed early: {close_code}"));
        }
        for note in notes {
            w.note_reply(note, elapsed);
        }
    });
    wake.notify_one();
}

/// Time one server event (what it means: `heard`) and count it.
fn on_event(
    plan: &StreamPlan,
    event: &Value,
    heard: Vec<Heard>,
    now: Instant,
    state: &Mutex<State>,
) {
    let kind = event["type"].as_str().unwrap_or("unknown").to_string();
    let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
    // The server's own stage times of a reply, recorded whether or not the reply pairs
    // with a transcript here: the server timed them from its own voice end.
    let stages = ReplyStages::from_event(event);
    let mut lags = None;
    let mut stale = false;
    let mut transcript = None;
    let mut notes: Vec<ReplyNote> = Vec::new();
    let (mut audio_frames, mut audio_bytes) = (0, 0);
    let mut errors = Vec::new();
    let mut st = lock(state);
    for heard in heard {
        match heard {
            Heard::SpeechStarted { audio_ms } | Heard::SpeechStopped { audio_ms } => {
                let started = matches!(heard, Heard::SpeechStarted { .. });
                st.in_speech = started;
                let hysteresis = if started {
                    plan.hysteresis.min_speech_ms
                } else {
                    st.pending_stops.push_back((now, audio_ms));
                    if st.pending_stops.len() > MAX_PENDING_STOPS {
                        // No recogniser is answering (STT disabled): keep the queue bounded.
                        st.pending_stops.pop_front();
                    }
                    plan.hysteresis.min_silence_ms
                };
                if st.streaming {
                    let raw = since(st.sent_at(audio_ms));
                    let decision = since(st.sent_at(audio_ms + hysteresis));
                    match raw.zip(decision) {
                        Some((raw, decision)) => lags = Some((started, raw, decision)),
                        None => stale = true,
                    }
                }
            }
            Heard::Transcript { stop_ms } => {
                let stop = stop_ms.and_then(|ms| take_stop(&mut st.pending_stops, ms));
                let voice_end = stop_ms.and_then(|ms| st.sent_at(stop.map_or(ms, |(_, at)| at)));
                notes.extend(st.replies.transcript(voice_end));
                transcript = Some((
                    stop.map(|(arrived, _)| now.saturating_duration_since(arrived)),
                    since(voice_end),
                ));
            }
            Heard::Reply { id, event } => notes.extend(st.replies.reply_event(now, &id, event)),
            Heard::Audio { bytes } => {
                notes.extend(st.replies.audio_frame(now));
                audio_frames += 1;
                audio_bytes += bytes;
            }
            Heard::Error { code } => errors.push(code),
        }
    }
    drop(st);
    let elapsed = run_time(plan, now);
    plan.shared.with_window(|w| {
        if let Some((started, raw, decision)) = lags {
            if started {
                w.lag_started.record(raw);
            } else {
                w.lag_stopped.record(raw);
            }
            w.lag_decision.record(decision);
            w.timeline.push((elapsed, decision.as_micros() as u64));
        }
        if stale {
            w.stale_events += 1;
        }
        if let Some((after_stop, after_voice)) = transcript {
            if let Some(d) = after_stop {
                w.transcript_after_stop.record(d);
                w.transcript_timeline.push((elapsed, d.as_micros() as u64));
            }
            if let Some(d) = after_voice {
                w.transcript_after_voice.record(d);
            }
        }
        w.audio_frames_received += audio_frames;
        w.audio_bytes_received += audio_bytes;
        for note in notes {
            w.note_reply(note, elapsed);
        }
        if let Some(stages) = &stages {
            w.reply_stages.record(stages);
        }
        for code in errors {
            Window::count(&mut w.errors, code);
        }
        Window::count(&mut w.events, kind);
    });
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;

    use super::*;

    /// On a paused clock: the Realtime hello first, then one frame of the loop every
    /// 20 ms from the session's offset (wrapping), then a Close once stopped.
    #[tokio::test(start_paused = true)]
    async fn frames_go_out_on_the_real_time_schedule_after_the_hello() {
        let protocol = Protocol::Realtime;
        let frames: Vec<Message> = (0..3u8)
            .map(|i| protocol.audio_message(&Bytes::from(vec![i; 960])))
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        let plan = StreamPlan {
            url: String::new(),
            protocol,
            turn: RealtimeTurn::Default,
            audio: Arc::new(frames.clone()),
            offset: 1,
            period: Duration::from_millis(FRAME_MS),
            hysteresis: Hysteresis {
                min_speech_ms: 100,
                min_silence_ms: 400,
            },
            drain: Duration::from_secs(1),
            shared: Shared::new(),
            stop: stop_rx,
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let sink = Box::pin(futures_util::sink::unfold(
            Arc::clone(&log),
            move |log, message: Message| async move {
                let at = Instant::now().saturating_duration_since(start).as_millis();
                log.lock().unwrap().push((at, message));
                Ok::<_, Infallible>(log)
            },
        ));
        let state = Mutex::new(State {
            streaming: true,
            ..State::default()
        });
        let wake = Notify::new();
        let stopper = async {
            sleep(Duration::from_millis(110)).await;
            stop_tx.send(true).expect("the writer listens");
        };
        tokio::join!(write_half(&plan, sink, &state, &wake), stopper);

        let log = log.lock().unwrap();
        let hello = protocol.hello(RealtimeTurn::Default).unwrap();
        assert_eq!(log[0], (0, hello));
        let sent: Vec<(u128, Message)> = log[1..log.len() - 1].to_vec();
        let expected: Vec<(u128, Message)> = (0..6)
            .map(|k| (20 * k as u128, frames[(1 + k) % 3].clone()))
            .collect();
        assert_eq!(sent, expected);
        assert!(matches!(log.last(), Some((110, Message::Close(_)))));
        assert_eq!(plan.shared.with_window(|w| w.frames_sent), 6);
    }
}
