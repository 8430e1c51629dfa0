//! Turns per-frame speech scores into speech start/stop events and padded segments.
//!
//! Engine-agnostic: webrtc-vad gives 0 or 1 per 20 ms frame, Silero a probability per
//! 32 ms window. Hysteresis (start above `start_threshold` for `min_speech_ms`, end below
//! `end_threshold` for `min_silence_ms`) stops flapping; `pad_ms` of audio is kept on
//! each side of a segment so the recogniser hears whole words. Segments longer than
//! `max_segment_ms` are cut so no segment grows without bound: while speech goes on it
//! continues into a fresh segment; in a pause the segment ends as if the pause had
//! lasted `min_silence_ms`.
//!
//! Drafts: `draft_after_ms` into a pause, long before `min_silence_ms` confirms the end,
//! the segment as it would end now is handed out as a draft (its trailing pad not yet
//! heard, so filled with silence). The recogniser can start on it at once; when the
//! final segment arrives with the same start and the same last voiced sample, the
//! draft's transcript is the final's, and most of the decode has already happened
//! during the pause.
//!
//! Semantic end of turn: with `turn_check_after_ms` set, that far into a pause the
//! turn so far is handed out as a [`TurnCheck`] for an end-of-turn model. Its verdict
//! comes back through [`Segmenter::end_turn`] (complete: the segment ends at once) or
//! [`Segmenter::turn_incomplete`] (the pause may last up to `turn_max_silence_ms`).
//! While the verdict is awaited the pause may also last that long, so a slow model
//! never cuts a sentence that it would have let go on; if no verdict can come
//! ([`Segmenter::turn_unknown`]) the segment ends after `min_silence_ms`, as with
//! silence alone.
//!
//! Manual turns (`manual`): no detection at all. Every sample is kept (the newest
//! `max_segment_ms` of it) until [`Segmenter::flush`] hands it on as one segment, as a
//! client that commits its own input expects.

use std::collections::VecDeque;

use super::MODEL_RATE;

#[derive(Debug, Clone, Copy)]
pub struct SegmenterConfig {
    pub start_threshold: f32,
    pub end_threshold: f32,
    pub min_speech_ms: u32,
    pub min_silence_ms: u32,
    pub pad_ms: u32,
    pub max_segment_ms: u32,
    /// Silence after which a draft of the segment is handed out; 0: no drafts.
    pub draft_after_ms: u32,
    /// While speech goes on, a partial draft every this many ms; 0: none.
    pub partial_every_ms: u32,
    /// Silence after which the turn is handed out for an end-of-turn verdict; 0: the
    /// turn ends on silence alone.
    pub turn_check_after_ms: u32,
    /// Longest pause inside a turn the end-of-turn model called incomplete.
    pub turn_max_silence_ms: u32,
    /// Keep segment audio (only needed when a recogniser listens).
    pub collect_audio: bool,
    /// Manual turns: no speech detection; a flush commits everything since the last.
    pub manual: bool,
}

/// Which pause of which segment: a verdict applies only to the pause it was asked
/// about (speech since then moves `voiced_end_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseKey {
    pub start_ms: u64,
    pub voiced_end_ms: u64,
}

/// The turn so far, for an end-of-turn model: the newest [`TURN_CHECK_MS`] of the
/// segment's audio up to now, trailing pause included.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnCheck {
    pub key: PauseKey,
    pub samples: Vec<i16>,
}

/// Audio an end-of-turn check looks at (Smart Turn reads the last 8 s).
pub const TURN_CHECK_MS: u32 = 8_000;

/// A boundary the client hears about, in milliseconds of the session's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    Started { audio_ms: u64 },
    Stopped { audio_ms: u64 },
}

/// One stretch of speech at 16 kHz, padded.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSegment {
    pub start_ms: u64,
    pub end_ms: u64,
    /// End of the last voiced frame: with `start_ms`, what a draft and its final share.
    pub voiced_end_ms: u64,
    pub samples: Vec<i16>,
}

impl SpeechSegment {
    /// Whether `final_segment` is the segment this draft anticipated.
    pub fn anticipates(&self, final_segment: &SpeechSegment) -> bool {
        (self.start_ms, self.voiced_end_ms) == (final_segment.start_ms, final_segment.voiced_end_ms)
    }
}

#[derive(Debug, Default)]
pub struct SegmenterOutput {
    pub events: Vec<SpeechEvent>,
    pub segments: Vec<SpeechSegment>,
    /// Segments as they would end if the current pause lasts (see the module doc).
    pub drafts: Vec<SpeechSegment>,
    /// The segment so far, while speech goes on: its transcript guides later ones.
    pub partials: Vec<SpeechSegment>,
    /// Speech went on after a pause that had been handed out as a draft: whatever
    /// was started on that draft is stale.
    pub resumed: bool,
    /// Pauses to ask the end-of-turn model about.
    pub turn_checks: Vec<TurnCheck>,
}

pub struct Segmenter {
    config: SegmenterConfig,
    /// Samples seen so far at 16 kHz: the audio clock.
    clock: u64,
    in_speech: bool,
    /// Consecutive samples on the "other side" of the current state.
    run: u64,
    /// Recent audio kept for the leading pad and the voiced run before a start.
    preroll: VecDeque<i16>,
    preroll_cap: usize,
    segment: Vec<i16>,
    segment_start: u64,
    /// Clock at the end of the last voiced frame of the current segment.
    last_voiced_end: u64,
    /// Clock from which the next partial draft is due.
    next_partial_at: u64,
    /// The end-of-turn model was asked about the current pause and has not called it
    /// complete (a verdict is awaited, or it said incomplete).
    pause_incomplete: bool,
}

fn ms_to_samples(ms: u32) -> u64 {
    u64::from(ms) * u64::from(MODEL_RATE) / 1000
}

fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / u64::from(MODEL_RATE)
}

impl Segmenter {
    pub fn new(config: SegmenterConfig) -> Self {
        let preroll_cap =
            (ms_to_samples(config.pad_ms) + ms_to_samples(config.min_speech_ms)) as usize + 1024;
        Segmenter {
            config,
            clock: 0,
            in_speech: false,
            run: 0,
            preroll: VecDeque::with_capacity(preroll_cap),
            preroll_cap,
            segment: Vec::new(),
            segment_start: 0,
            last_voiced_end: 0,
            next_partial_at: 0,
            pause_incomplete: false,
        }
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Milliseconds of audio seen so far: the audio clock.
    pub fn clock_ms(&self) -> u64 {
        samples_to_ms(self.clock)
    }

    /// New settings from the next frame on. Switching between manual and detected
    /// turns forgets the audio not handed on yet.
    pub fn set_config(&mut self, config: SegmenterConfig) {
        let switched = config.manual != self.config.manual;
        self.config = config;
        self.preroll_cap =
            (ms_to_samples(config.pad_ms) + ms_to_samples(config.min_speech_ms)) as usize + 1024;
        if switched {
            self.clear();
        }
    }

    /// Forget the open segment (or the manual turn's audio) without handing it on.
    pub fn clear(&mut self) {
        self.in_speech = false;
        self.run = 0;
        self.pause_incomplete = false;
        self.segment.clear();
        self.preroll.clear();
        self.segment_start = self.clock;
    }

    /// Feed one analysed frame with its speech score.
    pub fn push(&mut self, frame: &[i16], score: f32, out: &mut SegmenterOutput) {
        if self.config.manual {
            return self.push_manual(frame);
        }
        self.clock += frame.len() as u64;
        if self.in_speech {
            self.push_in_speech(frame, score, out);
        } else {
            self.push_in_silence(frame, score, out);
        }
    }

    fn push_in_silence(&mut self, frame: &[i16], score: f32, out: &mut SegmenterOutput) {
        self.preroll.extend(frame.iter().copied());
        while self.preroll.len() > self.preroll_cap {
            self.preroll.pop_front();
        }
        if score >= self.config.start_threshold {
            self.run += frame.len() as u64;
        } else {
            self.run = 0;
        }
        if self.run >= ms_to_samples(self.config.min_speech_ms).max(1) {
            let voiced_start = self.clock - self.run;
            self.in_speech = true;
            self.last_voiced_end = self.clock;
            let pad = ms_to_samples(self.config.pad_ms);
            let keep = ((self.run + pad) as usize).min(self.preroll.len());
            self.segment_start = self.clock - keep as u64;
            if self.config.collect_audio {
                let skip = self.preroll.len() - keep;
                self.segment.clear();
                self.segment.extend(self.preroll.iter().skip(skip).copied());
            }
            self.preroll.clear();
            self.run = 0;
            self.next_partial_at = self.clock + ms_to_samples(self.config.partial_every_ms);
            out.events.push(SpeechEvent::Started {
                audio_ms: samples_to_ms(voiced_start),
            });
        }
    }

    fn push_in_speech(&mut self, frame: &[i16], score: f32, out: &mut SegmenterOutput) {
        if self.config.collect_audio {
            self.segment.extend_from_slice(frame);
        }
        let before = self.run;
        let draft_at = ms_to_samples(self.config.draft_after_ms);
        if score >= self.config.end_threshold {
            self.run = 0;
            self.last_voiced_end = self.clock;
            self.pause_incomplete = false;
            if self.config.draft_after_ms > 0 && before >= draft_at {
                out.resumed = true;
            }
        } else {
            self.run += frame.len() as u64;
        }
        let check_at = ms_to_samples(self.config.turn_check_after_ms);
        if self.config.turn_check_after_ms > 0 && before < check_at && self.run >= check_at {
            let check = self.turn_check();
            self.pause_incomplete = check.is_some();
            out.turn_checks.extend(check);
        }
        if self.config.draft_after_ms > 0 && before < draft_at && self.run >= draft_at {
            out.drafts.extend(self.draft());
        }
        let every = ms_to_samples(self.config.partial_every_ms);
        if every > 0 && self.run == 0 && self.last_voiced_end >= self.next_partial_at {
            out.partials.extend(self.draft());
            self.next_partial_at = self.last_voiced_end + every;
        }
        let end_after = if self.pause_incomplete {
            self.config
                .turn_max_silence_ms
                .max(self.config.min_silence_ms)
        } else {
            self.config.min_silence_ms
        };
        let overlong = self.clock - self.segment_start >= ms_to_samples(self.config.max_segment_ms);
        if self.run >= ms_to_samples(end_after) || (overlong && self.run > 0) {
            // An overlong segment in a pause ends at its last voiced frame: cut there
            // instead, and the next piece would hold only the pause, its speech stop
            // before its own start (found by the `segmenter` fuzz target).
            self.finish_segment(out);
        } else if overlong {
            // Cut an overlong segment; speech continues into a fresh one.
            let cut = self.take_segment(self.clock);
            out.segments.extend(cut);
            self.segment_start = self.clock;
        }
    }

    fn pause_key(&self) -> PauseKey {
        PauseKey {
            start_ms: samples_to_ms(self.segment_start),
            voiced_end_ms: samples_to_ms(self.last_voiced_end),
        }
    }

    fn turn_check(&self) -> Option<TurnCheck> {
        if !self.config.collect_audio {
            return None;
        }
        let keep = ms_to_samples(TURN_CHECK_MS) as usize;
        let from = self.segment.len().saturating_sub(keep);
        Some(TurnCheck {
            key: self.pause_key(),
            samples: self.segment[from..].to_vec(),
        })
    }

    /// The end-of-turn model found the turn complete at the pause `key`: end the
    /// segment now, if that pause still goes on.
    pub fn end_turn(&mut self, key: PauseKey, out: &mut SegmenterOutput) -> bool {
        let current = self.in_speech && self.run > 0 && self.pause_key() == key;
        if current {
            self.finish_segment(out);
        }
        current
    }

    /// The end-of-turn model found the turn incomplete at the pause `key`: let it run
    /// up to `turn_max_silence_ms`.
    pub fn turn_incomplete(&mut self, key: PauseKey) {
        if self.in_speech && self.pause_key() == key {
            self.pause_incomplete = true;
        }
    }

    /// No verdict will come for the pause `key` (the model could not run): silence
    /// alone decides, after `min_silence_ms`.
    pub fn turn_unknown(&mut self, key: PauseKey, out: &mut SegmenterOutput) {
        if self.in_speech && self.pause_key() == key {
            self.pause_incomplete = false;
            if self.run >= ms_to_samples(self.config.min_silence_ms) {
                self.finish_segment(out);
            }
        }
    }

    /// Manual turns keep everything, the newest `max_segment_ms` at most (trimmed a
    /// second at a time, so the front is not moved on every frame).
    fn push_manual(&mut self, frame: &[i16]) {
        if self.segment.is_empty() {
            self.segment_start = self.clock;
        }
        self.clock += frame.len() as u64;
        if !self.config.collect_audio {
            return;
        }
        self.segment.extend_from_slice(frame);
        let cap = ms_to_samples(self.config.max_segment_ms) as usize;
        let second = ms_to_samples(1000) as usize;
        if self.segment.len() > cap + second {
            let excess = self.segment.len() - cap;
            self.segment.drain(..excess);
            self.segment_start += excess as u64;
        }
    }

    /// End the current segment now (the client's input is complete, or silence was
    /// long enough). False if there was nothing to hand on.
    pub fn flush(&mut self, out: &mut SegmenterOutput) -> bool {
        if self.config.manual {
            if self.segment.is_empty() {
                return false;
            }
            self.last_voiced_end = self.clock;
            let segment = self.take_segment(self.clock);
            out.segments.extend(segment);
            self.segment_start = self.clock;
            return true;
        }
        let open = self.in_speech;
        if open {
            self.last_voiced_end = self.clock;
            self.finish_segment(out);
        }
        self.preroll.clear();
        self.run = 0;
        open
    }

    /// The current segment as `finish_segment` would cut it once the pause is long
    /// enough, with the pad not yet heard filled with silence.
    fn draft(&self) -> Option<SpeechSegment> {
        if !self.config.collect_audio {
            return None;
        }
        let end = self.last_voiced_end + ms_to_samples(self.config.pad_ms);
        let len = end.saturating_sub(self.segment_start) as usize;
        let mut samples = Vec::with_capacity(len);
        samples.extend_from_slice(&self.segment[..len.min(self.segment.len())]);
        samples.resize(len, 0);
        Some(SpeechSegment {
            start_ms: samples_to_ms(self.segment_start),
            end_ms: samples_to_ms(end),
            voiced_end_ms: samples_to_ms(self.last_voiced_end),
            samples,
        })
    }

    fn finish_segment(&mut self, out: &mut SegmenterOutput) {
        let end = (self.last_voiced_end + ms_to_samples(self.config.pad_ms)).min(self.clock);
        out.events.push(SpeechEvent::Stopped {
            audio_ms: samples_to_ms(self.last_voiced_end),
        });
        out.segments.extend(self.take_segment(end));
        self.in_speech = false;
        self.run = 0;
        self.pause_incomplete = false;
    }

    fn take_segment(&mut self, end: u64) -> Option<SpeechSegment> {
        if !self.config.collect_audio {
            return None;
        }
        let keep = (end.saturating_sub(self.segment_start) as usize).min(self.segment.len());
        let mut samples = std::mem::take(&mut self.segment);
        samples.truncate(keep);
        Some(SpeechSegment {
            start_ms: samples_to_ms(self.segment_start),
            end_ms: samples_to_ms(end),
            voiced_end_ms: samples_to_ms(self.last_voiced_end.min(end)),
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SegmenterConfig {
        SegmenterConfig {
            start_threshold: 0.5,
            end_threshold: 0.5,
            min_speech_ms: 60,
            min_silence_ms: 200,
            pad_ms: 100,
            max_segment_ms: 30_000,
            draft_after_ms: 0,
            partial_every_ms: 0,
            turn_check_after_ms: 0,
            turn_max_silence_ms: 0,
            collect_audio: true,
            manual: false,
        }
    }

    /// Feed `ms` of 20 ms frames with a constant score.
    fn feed(seg: &mut Segmenter, ms: u32, score: f32, out: &mut SegmenterOutput) {
        for _ in 0..ms / 20 {
            seg.push(&[score as i16; 320], score, out);
        }
    }

    #[test]
    fn one_utterance_gives_start_stop_and_a_padded_segment() {
        let mut seg = Segmenter::new(config());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 1000, 0.0, &mut out);
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 1000, 0.0, &mut out);
        assert_eq!(
            out.events,
            vec![
                SpeechEvent::Started { audio_ms: 1000 },
                SpeechEvent::Stopped { audio_ms: 1800 }
            ]
        );
        let segment = &out.segments[0];
        assert_eq!((segment.start_ms, segment.end_ms), (900, 1900));
        assert_eq!(segment.samples.len(), 16 * 1000);
    }

    #[test]
    fn short_blips_and_short_pauses_do_not_flap() {
        let mut seg = Segmenter::new(config());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 40, 1.0, &mut out); // shorter than min_speech_ms
        feed(&mut seg, 500, 0.0, &mut out);
        assert!(out.events.is_empty());
        feed(&mut seg, 400, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out); // shorter than min_silence_ms
        feed(&mut seg, 400, 1.0, &mut out);
        seg.flush(&mut out);
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.segments.len(), 1);
    }

    #[test]
    fn overlong_speech_is_cut() {
        let mut seg = Segmenter::new(SegmenterConfig {
            max_segment_ms: 1000,
            ..config()
        });
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 2500, 1.0, &mut out);
        seg.flush(&mut out);
        assert_eq!(out.segments.len(), 3);
        assert!(out
            .segments
            .iter()
            .all(|s| s.samples.len() <= 16_000 + 1600));
    }

    #[test]
    fn an_overlong_segment_reaching_its_bound_in_a_pause_ends_there() {
        let mut seg = Segmenter::new(SegmenterConfig {
            min_silence_ms: 400,
            max_segment_ms: 700,
            ..config()
        });
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 500, 0.0, &mut out);
        feed(&mut seg, 400, 1.0, &mut out);
        // The segment (from 400 ms, its pad) reaches 700 ms at 1,100 ms, 200 ms into the
        // pause. It used to be cut there and continue as a piece of pause alone, which
        // ended at 1,000 ms, before its start.
        feed(&mut seg, 600, 0.0, &mut out);
        assert_eq!(
            out.events,
            vec![
                SpeechEvent::Started { audio_ms: 500 },
                SpeechEvent::Stopped { audio_ms: 900 }
            ]
        );
        assert_eq!(out.segments.len(), 1, "{:?}", out.segments);
        let segment = &out.segments[0];
        assert_eq!(
            (segment.start_ms, segment.voiced_end_ms, segment.end_ms),
            (400, 900, 1000)
        );
        assert_eq!(segment.samples.len(), 16 * 600);
    }

    #[test]
    fn a_draft_anticipates_the_final_segment_of_an_unbroken_pause() {
        let mut seg = Segmenter::new(SegmenterConfig {
            draft_after_ms: 60,
            ..config()
        });
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 1000, 0.0, &mut out);
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out);
        assert_eq!(
            out.drafts.len(),
            1,
            "one draft once the pause reaches 60 ms"
        );
        assert!(
            out.segments.is_empty(),
            "the pause is not yet min_silence_ms"
        );
        feed(&mut seg, 400, 0.0, &mut out);
        let (draft, last) = (&out.drafts[0], &out.segments[0]);
        assert!(draft.anticipates(last));
        assert_eq!((draft.start_ms, draft.end_ms), (last.start_ms, last.end_ms));
        assert_eq!(draft.samples.len(), last.samples.len());
    }

    #[test]
    fn speech_after_a_draft_makes_the_draft_stale() {
        let mut seg = Segmenter::new(SegmenterConfig {
            draft_after_ms: 60,
            ..config()
        });
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 1000, 0.0, &mut out);
        feed(&mut seg, 400, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out);
        feed(&mut seg, 400, 1.0, &mut out);
        feed(&mut seg, 500, 0.0, &mut out);
        assert_eq!(out.drafts.len(), 2, "a draft at each pause");
        assert!(out.resumed, "speech after the first draft's pause");
        assert!(!out.drafts[0].anticipates(&out.segments[0]));
        assert!(out.drafts[1].anticipates(&out.segments[0]));
    }

    fn smart() -> SegmenterConfig {
        SegmenterConfig {
            turn_check_after_ms: 100,
            turn_max_silence_ms: 1000,
            ..config()
        }
    }

    #[test]
    fn a_complete_verdict_ends_the_turn_at_once() {
        let mut seg = Segmenter::new(smart());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 500, 0.0, &mut out);
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out);
        assert_eq!(out.turn_checks.len(), 1, "one check 100 ms into the pause");
        assert!(out.segments.is_empty());
        let check = out.turn_checks[0].clone();
        assert_eq!(check.key.voiced_end_ms, 1300);
        assert_eq!(
            check.samples.len(),
            16 * (100 + 800 + 100),
            "pad, speech, pause"
        );
        assert!(seg.end_turn(check.key, &mut out));
        assert_eq!(out.segments.len(), 1);
        assert_eq!(
            out.events.last(),
            Some(&SpeechEvent::Stopped { audio_ms: 1300 })
        );
        assert!(!seg.end_turn(check.key, &mut out), "a verdict applies once");
    }

    #[test]
    fn an_incomplete_verdict_lets_the_pause_run_to_the_longer_bound() {
        let mut seg = Segmenter::new(smart());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 500, 0.0, &mut out);
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out);
        seg.turn_incomplete(out.turn_checks[0].key);
        feed(&mut seg, 800, 0.0, &mut out);
        assert!(
            out.segments.is_empty(),
            "min_silence_ms (200) passed, the turn goes on"
        );
        feed(&mut seg, 300, 0.0, &mut out);
        assert_eq!(out.segments.len(), 1, "ended at turn_max_silence_ms");
    }

    #[test]
    fn a_late_verdict_for_a_pause_that_ended_changes_nothing() {
        let mut seg = Segmenter::new(smart());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 100, 0.0, &mut out);
        let key = out.turn_checks[0].key;
        feed(&mut seg, 200, 1.0, &mut out); // speech resumed
        assert!(!seg.end_turn(key, &mut out));
        feed(&mut seg, 200, 0.0, &mut out);
        let key = out.turn_checks[1].key;
        seg.turn_unknown(key, &mut out);
        assert_eq!(
            out.segments.len(),
            1,
            "no verdict can come for this pause: min_silence_ms"
        );
    }

    #[test]
    fn an_awaited_verdict_holds_the_pause_up_to_the_longer_bound() {
        let mut seg = Segmenter::new(smart());
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 800, 1.0, &mut out);
        feed(&mut seg, 900, 0.0, &mut out);
        assert!(
            out.segments.is_empty(),
            "the model is slow: the pause is held"
        );
        feed(&mut seg, 200, 0.0, &mut out);
        assert_eq!(out.segments.len(), 1, "but never past turn_max_silence_ms");
    }

    #[test]
    fn partials_come_at_their_interval_while_speech_goes_on() {
        let mut seg = Segmenter::new(SegmenterConfig {
            partial_every_ms: 500,
            ..config()
        });
        let mut out = SegmenterOutput::default();
        feed(&mut seg, 1000, 0.0, &mut out);
        feed(&mut seg, 1800, 1.0, &mut out);
        let ends: Vec<u64> = out.partials.iter().map(|p| p.voiced_end_ms).collect();
        assert_eq!(ends, vec![1560, 2060, 2560]);
        assert!(out
            .partials
            .iter()
            .all(|p| p.start_ms == out.partials[0].start_ms));
    }
}
