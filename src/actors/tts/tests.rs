//! Unit tests of the reply being spoken: pacing, audio ahead and words early.

use super::*;

fn speech(frames: usize, pieces_started: usize) -> Speech {
    Speech {
        response_id: Uuid::nil(),
        splitter: SentenceSplitter::with_first_piece_words(2),
        queue: VecDeque::new(),
        synthesizing: false,
        text_done: false,
        frames: (0..frames).map(|_| (Bytes::new(), None)).collect(),
        clock: None,
        audio_started: false,
        held: false,
        pieces_started,
        dry: true,
        synthesis: CancelOnDrop(crate::workers::CancelToken::new()),
    }
}

#[test]
fn audio_ahead_counts_waiting_frames_and_what_was_sent_early() {
    let now = Instant::now();
    let mut s = speech(10, 1);
    assert_eq!(s.audio_ahead(now), Duration::from_millis(200));
    // 300 ms sent, 100 ms of it played: 200 ms still in the client's buffer.
    s.clock = Some((now - Duration::from_millis(100), Duration::from_millis(300)));
    assert_eq!(s.audio_ahead(now), Duration::from_millis(400));
    // Played past what was sent: nothing ahead from the wire.
    s.clock = Some((now - Duration::from_secs(1), Duration::from_millis(300)));
    assert_eq!(s.audio_ahead(now), Duration::from_millis(200));
}

#[test]
fn later_pieces_wait_until_the_audio_ahead_runs_low() {
    let now = Instant::now();
    let ahead = Duration::from_millis(1000);
    // The first piece never waits, whatever is buffered.
    assert!(speech(0, 0).ready_to_synthesize(now, ahead));
    // 2 s waiting: the next piece can wait.
    assert!(!speech(100, 1).ready_to_synthesize(now, ahead));
    // 0.8 s waiting: time to synthesise the next one.
    assert!(speech(40, 1).ready_to_synthesize(now, ahead));
    // Zero turns pacing off.
    assert!(speech(100, 1).ready_to_synthesize(now, Duration::ZERO));
    // One piece at a time, and a held reply only gets its first.
    let mut busy = speech(0, 1);
    busy.synthesizing = true;
    assert!(!busy.ready_to_synthesize(now, ahead));
    let mut held = speech(0, 1);
    held.held = true;
    assert!(!held.ready_to_synthesize(now, ahead));
}

#[test]
fn words_go_early_only_when_a_speaking_reply_runs_low() {
    let now = Instant::now();
    let low = Duration::from_millis(700);
    let with_text = |frames, pieces| {
        let mut s = speech(frames, pieces);
        s.splitter.push("Sure, Paris is the capital of Fra");
        s.splitter.take_words(1); // the first piece's words are out already
        s.splitter.push("nce and its larg");
        s
    };
    // 0.4 s left: the words written so far go now, the unfinished one stays.
    let mut s = with_text(20, 1);
    assert_eq!(
        s.words_before_running_dry(now, low).as_deref(),
        Some("France and its")
    );
    // 2 s left, before the first piece, held, busy, something queued, or off: wait.
    assert_eq!(with_text(100, 1).words_before_running_dry(now, low), None);
    assert_eq!(with_text(0, 0).words_before_running_dry(now, low), None);
    let mut held = with_text(20, 1);
    held.held = true;
    assert_eq!(held.words_before_running_dry(now, low), None);
    let mut busy = with_text(20, 1);
    busy.synthesizing = true;
    assert_eq!(busy.words_before_running_dry(now, low), None);
    let mut queued = with_text(20, 1);
    queued.queue.push_back((
        "Next.".into(),
        GaugeGuard::new(prometheus::IntGauge::new("g", "g").unwrap()),
    ));
    assert_eq!(queued.words_before_running_dry(now, low), None);
    assert_eq!(
        with_text(20, 1).words_before_running_dry(now, Duration::ZERO),
        None
    );
}
