//! The input audio buffer: `input_audio_buffer.append`, `.commit`, `.clear`, and the
//! user's turns as the pipeline reports them (speech started and stopped, committed,
//! transcribed).
//!
//! Appended audio is base64 in the session's input format. It is checked (valid
//! base64, whole samples, at most `realtime.max_append_ms`) and handed on in 20 ms
//! pieces, so a large append enters the pipeline like a microphone's stream and is
//! paced by the same backpressure.

use base64::Engine as _;
use bytes::Bytes;

use super::error::RealtimeError;
use super::items::LoggedItem;
use super::server::{Content, ItemJson, ItemStatus, ServerEvent, StatusError, TranscriptionUsage};
use super::RealtimeWire;
use crate::protocol::native::AudioFormat;
use crate::protocol::pipeline::{Command, ItemRole};
use crate::protocol::wire::{Action, Fault, Outbox};

/// Audio handed on per piece, in ms.
const PIECE_MS: u64 = 20;
/// Least audio a commit needs, in ms (as the Realtime API asks).
const MIN_COMMIT_MS: u64 = 100;

#[derive(Debug, Default)]
pub struct InputBuffer {
    format: Option<AudioFormat>,
    total_bytes: u64,
    uncommitted_bytes: u64,
}

impl InputBuffer {
    pub fn sent_any(&self) -> bool {
        self.total_bytes > 0
    }

    fn ms(&self, bytes: u64) -> u64 {
        self.format
            .map_or(0, |format| format.bytes_to_ms(bytes as usize))
    }

    /// Milliseconds of audio appended in the session.
    pub fn total_ms(&self) -> u64 {
        self.ms(self.total_bytes)
    }

    pub fn uncommitted_ms(&self) -> u64 {
        self.ms(self.uncommitted_bytes)
    }

    pub fn clear(&mut self) {
        self.uncommitted_bytes = 0;
    }
}

impl RealtimeWire {
    /// Base64 audio of the session's input format, checked: at most
    /// `realtime.max_append_ms` (measured before decoding, so an oversized event costs
    /// no allocation), valid base64, whole samples. `param` names the field in errors.
    pub(super) fn decode_audio(&self, audio: &str, param: &str) -> Result<Bytes, RealtimeError> {
        let format = self.session.input;
        let width = u64::from(format.codec.bytes_per_sample().unwrap_or(1));
        let max_bytes = self.defaults.max_append_ms * u64::from(format.sample_rate) * width / 1000;
        let bytes = audio.len() as u64 / 4 * 3;
        if bytes > max_bytes + 3 {
            let message = format!(
                "the event carries about {} ms of audio; at most {} ms per event",
                format.bytes_to_ms(bytes as usize),
                self.defaults.max_append_ms
            );
            let error = RealtimeError::invalid(Fault::AudioTooLarge, "audio_too_large", message);
            return Err(error.param(param));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(audio)
            .map_err(|e| {
                let message = format!("Invalid '{param}': expected base64-encoded audio ({e})");
                RealtimeError::invalid(Fault::BadBase64, "invalid_audio", message).param(param)
            })?;
        if !(decoded.len() as u64).is_multiple_of(width) {
            let message = format!(
                "16-bit PCM audio has an even number of bytes; this has {}",
                decoded.len()
            );
            let error = RealtimeError::invalid(Fault::BadAudio, "invalid_audio", message);
            return Err(error.param(param));
        }
        Ok(Bytes::from(decoded))
    }

    pub(super) fn append(&mut self, audio: &str, out: &mut Outbox) -> Result<(), RealtimeError> {
        let format = self.session.input;
        let width = u64::from(format.codec.bytes_per_sample().unwrap_or(1));
        let audio = self.decode_audio(audio, "audio")?;
        if audio.is_empty() {
            return Ok(());
        }
        self.input.format = Some(format);
        self.input.total_bytes += audio.len() as u64;
        self.input.uncommitted_bytes += audio.len() as u64;
        let piece = (PIECE_MS * u64::from(format.sample_rate) / 1000 * width) as usize;
        let mut at = 0;
        while at < audio.len() {
            let end = (at + piece).min(audio.len());
            out.push(Action::Audio(audio.slice(at..end)));
            at = end;
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, out: &mut Outbox) -> Result<(), RealtimeError> {
        let buffered = self.input.uncommitted_ms();
        if buffered < MIN_COMMIT_MS {
            let message = format!(
                "buffer too small: a commit needs at least {MIN_COMMIT_MS} ms of audio, the \
                 buffer holds {buffered} ms"
            );
            return Err(RealtimeError::state(
                "input_audio_buffer_commit_empty",
                message,
            ));
        }
        self.disarm_idle_timer();
        out.command(Command::CommitInput);
        Ok(())
    }

    /// Speech events go out under voice activity only (manual turns have none).
    pub(super) fn on_speech(
        &mut self,
        started: bool,
        audio_ms: u64,
        item_id: &str,
        out: &mut Outbox,
    ) {
        if self.session.turn_detection.is_none() {
            return;
        }
        self.in_speech = started;
        let event = if started {
            self.disarm_idle_timer();
            ServerEvent::SpeechStarted {
                audio_start_ms: audio_ms,
                item_id,
            }
        } else {
            ServerEvent::SpeechStopped {
                audio_end_ms: audio_ms,
                item_id,
            }
        };
        self.send(out, &event);
    }

    /// A turn became a user item: committed, added, its words to follow.
    pub(super) fn on_committed(&mut self, item_id: &str, out: &mut Outbox) {
        self.input.clear();
        self.in_speech = false;
        let previous = self.items.last().map(str::to_string);
        let previous_item_id = previous.as_deref();
        self.send(
            out,
            &ServerEvent::Committed {
                previous_item_id,
                item_id,
            },
        );
        let item = user_audio_item(item_id, None, ItemStatus::Completed);
        self.send(
            out,
            &ServerEvent::ItemAdded {
                previous_item_id,
                item: &item,
            },
        );
        let logged = LoggedItem {
            role: ItemRole::User,
            audio: true,
            pieces: Vec::new(),
            audio_ms: 0,
        };
        self.items.add(item_id, logged, None);
    }

    /// The turn's words: `transcription.delta` and `.completed` when transcription is
    /// on (one delta with every word: Moonshine's partial guesses are revised, so
    /// they are never sent), then `conversation.item.done`.
    pub(super) fn on_transcript(
        &mut self,
        item_id: &str,
        text: &str,
        audio_ms: u64,
        out: &mut Outbox,
    ) {
        let transcribing = self.session.transcription.is_some();
        if transcribing {
            if !text.is_empty() {
                let delta = ServerEvent::TranscriptionDelta {
                    item_id,
                    content_index: 0,
                    delta: text,
                };
                self.send(out, &delta);
            }
            let usage = TranscriptionUsage {
                kind: "duration",
                seconds: audio_ms as f64 / 1000.0,
            };
            let completed = ServerEvent::TranscriptionCompleted {
                item_id,
                content_index: 0,
                transcript: text,
                usage,
            };
            self.send(out, &completed);
        }
        let transcript = transcribing.then(|| text.to_string());
        self.item_done(item_id, transcript, out);
    }

    pub(super) fn on_transcript_failed(
        &mut self,
        item_id: &str,
        message: String,
        out: &mut Outbox,
    ) {
        if self.session.transcription.is_some() {
            let error = StatusError {
                kind: "transcription_error",
                code: "transcription_failed",
                message,
            };
            let failed = ServerEvent::TranscriptionFailed {
                item_id,
                content_index: 0,
                error,
            };
            self.send(out, &failed);
        }
        self.item_done(item_id, None, out);
    }

    fn item_done(&mut self, item_id: &str, transcript: Option<String>, out: &mut Outbox) {
        let item = user_audio_item(item_id, transcript, ItemStatus::Completed);
        let previous = self.previous_of(item_id);
        self.send(
            out,
            &ServerEvent::ItemDone {
                previous_item_id: previous.as_deref(),
                item: &item,
            },
        );
    }

    /// The item before `item_id` in this session's log.
    pub(super) fn previous_of(&self, item_id: &str) -> Option<String> {
        self.items.before(item_id).map(str::to_string)
    }
}

pub(super) fn user_audio_item(
    id: &str,
    transcript: Option<String>,
    status: ItemStatus,
) -> ItemJson {
    let content = vec![Content::InputAudio { transcript }];
    ItemJson::message(id, ItemRole::User, status, content)
}
