//! The ramp's step verdicts and reports.

use super::*;
use crate::bench::replies::ReplyStages;

/// A measured window of `n` sessions keeping up (30 ms decision lag).
fn keeping_up(events: u64) -> Window {
    let mut w = Window::default();
    for i in 0..events {
        w.lag_decision.record_us(30_000);
        w.timeline.push((i as f64, 30_000));
    }
    w
}

#[test]
fn refusals_at_the_limit_with_admitted_sessions_keeping_up_enforce_the_limit() {
    let mut warmup = Window::default();
    for _ in 0..20 {
        warmup.reject("503 server_full");
    }
    let step = judge(80, 60, &warmup, &keeping_up(100), &LatencyBounds::default());
    assert!(step.pass && step.limit_enforced, "{:?}", step.reasons);
    assert_eq!(step.refused(), 20);
    assert!(step_line(&step).contains("LIMIT ENFORCED: 20 refused (503 server_full=20)"));
}

#[test]
fn refusals_do_not_hide_a_server_falling_behind() {
    let mut warmup = Window::default();
    warmup.reject("503 server_full");
    let mut measured = keeping_up(100);
    for _ in 0..100 {
        measured.lag_decision.record_us(900_000);
    }
    let step = judge(61, 60, &warmup, &measured, &LatencyBounds::default());
    assert!(!step.pass && !step.limit_enforced);
    assert!(step_line(&step).contains("and 1 refused at the limit"));
}

#[test]
fn other_refusals_are_failures_and_missing_sessions_count() {
    let mut warmup = Window::default();
    warmup.fail("connect: HTTP 503 not_ready");
    let step = judge(10, 9, &warmup, &keeping_up(50), &LatencyBounds::default());
    assert!(!step.pass && !step.limit_enforced);
    // Without refusals, every requested session must be live.
    let step = judge(
        10,
        8,
        &Window::default(),
        &keeping_up(50),
        &LatencyBounds::default(),
    );
    assert!(step.reasons.iter().any(|r| r.contains("only 8 of 10")));
}

#[test]
fn each_step_reports_the_server_stage_times_it_measured() {
    let mut warmup = keeping_up(10);
    warmup
        .reply_stages
        .record(&ReplyStages::of(&[(Stage::FirstAudio, 9_000)]));
    let mut measured = keeping_up(100);
    for ms in [400, 450, 500] {
        measured.reply_stages.record(&ReplyStages::of(&[
            (Stage::TurnDecided, 180),
            (Stage::FirstAudio, ms),
        ]));
    }
    let step = judge(10, 10, &warmup, &measured, &LatencyBounds::default());
    // The warm-up is not measured.
    assert_eq!(step.reply_stages.reported, 3);
    assert!((step.reply_stages.first_audio.max_ms - 500.0).abs() < 0.5);
    let json = serde_json::to_value(&step).unwrap();
    assert_eq!(json["reply_stages"]["turn_decided"]["count"], 3);
    assert_eq!(json["reply_stages"]["first_clause"]["count"], 0);

    let quiet = judge(
        20,
        20,
        &Window::default(),
        &keeping_up(100),
        &LatencyBounds::default(),
    );
    let table = stage_table(&[step, quiet]);
    assert_eq!(table.len(), 4, "{table:#?}");
    assert!(table[1].contains("turn_decided") && table[1].contains("first_audio"));
    assert!(
        table[2].trim_start().starts_with("10       3"),
        "{}",
        table[2]
    );
    assert!(
        table[2].contains("500.") && table[2].contains(" -"),
        "{}",
        table[2]
    );
    assert!(table[3].trim_end().ends_with('-'), "{}", table[3]);
    assert!(stage_table(&[judge(
        5,
        5,
        &Window::default(),
        &keeping_up(9),
        &LatencyBounds::default()
    )])
    .is_empty());
}

#[test]
fn a_step_whose_replies_come_late_falls_behind_under_latency_bounds() {
    let bounds = LatencyBounds {
        max_transcript_p95_ms: Some(1_500.0),
        max_first_audio_p95_ms: Some(2_500.0),
    };
    let mut measured = keeping_up(100);
    for ms in [600, 700, 800] {
        measured.transcript_after_voice.record_us(ms * 1_000);
        measured.reply_audio_after_voice.record_us(ms * 4_000);
    }
    // The VAD keeps pace, so without bounds the step passes.
    assert!(
        judge(
            16,
            16,
            &Window::default(),
            &measured,
            &LatencyBounds::default()
        )
        .pass
    );
    let step = judge(16, 16, &Window::default(), &measured, &bounds);
    assert!(!step.pass);
    // 3,200 ms within the histogram's three significant digits.
    assert_eq!(step.reasons.len(), 1, "{:?}", step.reasons);
    let reason = &step.reasons[0];
    assert!(reason.starts_with("first reply audio p95 320"), "{reason}");
    assert!(reason.ends_with(" ms > 2500 ms"), "{reason}");
    assert!(step_line(&step).contains("FALLING BEHIND: first reply audio p95 320"));
}
