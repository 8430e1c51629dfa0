//! Responses: `response.create` and `response.cancel`, and a reply's life as Realtime
//! events.
//!
//! A reply announced by the pipeline opens its response (`response.created`, the
//! output item, its content part). Text modality: the model's deltas are
//! `response.output_text.delta`. Audio modality: the transcript is the words of the
//! audio actually sent (`SpokenText` comes with the first frame of each spoken piece),
//! so the audio always says its transcript, and the pieces' timing is kept for
//! `conversation.item.truncate`. `ReplyFinished` (text and speech both over) closes
//! everything, ending with `response.done`. Once the client cancels a response, none
//! of its audio or text goes out any more.

use base64::Engine as _;
use serde_json::Value;
use uuid::Uuid;

use super::client::ResponseParam;
use super::error::RealtimeError;
use super::items::{LoggedItem, Piece};
use super::server::{
    At, AudioOutputJson, Content, EventIds, ItemJson, ItemStatus, Part, ResponseAudioJson,
    ResponseJson, ServerEvent, StatusDetails, StatusError, UsageJson,
};
use super::session::{max_tokens, modality, modality_name, FormatJson};
use super::RealtimeWire;
use crate::protocol::native::AudioFormat;
use crate::protocol::pipeline::{
    CancelReason, Command, ItemId, ItemRole, Modality, ReplyOptions, ReplyStatus, Usage,
};
use crate::protocol::wire::{Fault, Outbox};

/// Every reply audio frame is 20 ms (the TTS pads the last one).
const FRAME_MS: u64 = 20;

pub struct ResponseState {
    pipeline_id: Uuid,
    id: String,
    item_id: ItemId,
    /// The item before it in the conversation (none out of band).
    previous: Option<String>,
    modality: Modality,
    out_of_band: bool,
    max_output_tokens: u32,
    metadata: Option<Value>,
    voice: Value,
    output: AudioFormat,
    text: String,
    transcript: String,
    pieces: Vec<Piece>,
    frames: u64,
    /// Cancelled by the client: nothing more of it goes out.
    cut: bool,
}

impl ResponseState {
    fn at(&self) -> At<'_> {
        At {
            response_id: &self.id,
            item_id: &self.item_id,
            output_index: 0,
            content_index: 0,
        }
    }

    fn content(&self) -> Vec<Content> {
        match self.modality {
            Modality::Audio => vec![Content::OutputAudio {
                transcript: Some(self.transcript.clone()),
            }],
            Modality::Text => vec![Content::OutputText {
                text: self.text.clone(),
            }],
        }
    }

    fn part(&self) -> Part {
        match self.modality {
            Modality::Audio => Part::Audio {
                transcript: self.transcript.clone(),
            },
            Modality::Text => Part::Text {
                text: self.text.clone(),
            },
        }
    }

    /// The output item added (or done), and, in the conversation, the item too.
    fn item_events(&self, ids: &mut EventIds, out: &mut Outbox, item: &ItemJson, done: bool) {
        let (response_id, previous_item_id) = (self.id.as_str(), self.previous.as_deref());
        let output = if done {
            ServerEvent::OutputItemDone {
                response_id,
                output_index: 0,
                item,
            }
        } else {
            ServerEvent::OutputItemAdded {
                response_id,
                output_index: 0,
                item,
            }
        };
        out.text(ids.frame(&output));
        if self.out_of_band {
            return;
        }
        let conversation = if done {
            ServerEvent::ItemDone {
                previous_item_id,
                item,
            }
        } else {
            ServerEvent::ItemAdded {
                previous_item_id,
                item,
            }
        };
        out.text(ids.frame(&conversation));
    }

    fn item(&self, status: ItemStatus, content: Vec<Content>) -> ItemJson {
        ItemJson::message(&self.item_id, ItemRole::Assistant, status, content)
    }

    fn json<'a>(
        &'a self,
        status: &'static str,
        status_details: Option<StatusDetails>,
        output: Vec<ItemJson>,
        usage: Option<UsageJson>,
        conversation_id: &'a str,
    ) -> ResponseJson<'a> {
        ResponseJson {
            id: &self.id,
            object: "realtime.response",
            status,
            status_details,
            output,
            conversation_id: (!self.out_of_band).then_some(conversation_id),
            output_modalities: [modality_name(self.modality)],
            max_output_tokens: self.max_output_tokens,
            audio: ResponseAudioJson {
                output: AudioOutputJson {
                    format: FormatJson::of(self.output),
                    voice: &self.voice,
                },
            },
            usage,
            metadata: self.metadata.as_ref(),
        }
    }
}

#[derive(Default)]
pub struct Responses {
    live: Vec<ResponseState>,
    /// A reply was asked for and has not started yet.
    pub requested: bool,
    /// The metadata of the reply asked for, until it starts.
    metadata: Option<Value>,
    /// The reply asked for was cancelled before it started.
    cancel_next: bool,
    /// The reply whose audio is going out.
    speaking: Option<Uuid>,
}

impl Responses {
    /// A response is under way or about to start.
    pub fn busy(&self) -> bool {
        self.requested || !self.live.is_empty()
    }

    fn find(&mut self, id: Uuid) -> Option<&mut ResponseState> {
        self.live.iter_mut().find(|r| r.pipeline_id == id)
    }
}

fn status_json(status: &ReplyStatus) -> (&'static str, Option<StatusDetails>) {
    let details = |kind, reason| StatusDetails {
        kind,
        reason: Some(reason),
        error: None,
    };
    match status {
        ReplyStatus::Completed => ("completed", None),
        ReplyStatus::Cancelled(CancelReason::Client) => {
            ("cancelled", Some(details("cancelled", "client_cancelled")))
        }
        ReplyStatus::Cancelled(CancelReason::TurnDetected) => {
            ("cancelled", Some(details("cancelled", "turn_detected")))
        }
        ReplyStatus::Incomplete => (
            "incomplete",
            Some(details("incomplete", "max_output_tokens")),
        ),
        ReplyStatus::Failed { message } => (
            "failed",
            Some(StatusDetails {
                kind: "failed",
                reason: None,
                error: Some(StatusError {
                    kind: "server_error",
                    code: "response_failed",
                    message: message.clone(),
                }),
            }),
        ),
    }
}

impl RealtimeWire {
    pub(super) fn create_response(
        &mut self,
        params: &ResponseParam,
        out: &mut Outbox,
    ) -> Result<(), RealtimeError> {
        if self.responses.busy() {
            let message = "the conversation already has an active response; cancel it or wait \
                           for response.done";
            return Err(RealtimeError::state(
                "conversation_already_has_active_response",
                message,
            ));
        }
        let out_of_band = match params.conversation.as_deref() {
            None | Some("auto") => false,
            Some("none") => true,
            Some(_) => {
                let message = "only the session's conversation (\"auto\") or none (\"none\")";
                return Err(RealtimeError::unsupported("response.conversation", message));
            }
        };
        if params.input.as_ref().is_some_and(|input| !input.is_empty()) {
            let message = "custom input for a response is not supported: add items with \
                           conversation.item.create";
            return Err(RealtimeError::unsupported("response.input", message));
        }
        if params.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            let message = "tools are not supported yet: hearken's models do not call functions";
            return Err(RealtimeError::unsupported("response.tools", message));
        }
        if let Some(instructions) = &params.instructions {
            if instructions.len() > self.defaults.max_instructions_bytes {
                let message = format!(
                    "instructions are {} bytes; the limit is {}",
                    instructions.len(),
                    self.defaults.max_instructions_bytes
                );
                let error = RealtimeError::invalid(Fault::PromptTooLarge, "too_large", message);
                return Err(error.param("response.instructions"));
            }
        }
        let modality = match &params.output_modalities {
            Some(names) => modality(names, "response.output_modalities", &self.defaults)?,
            None => self.session.modality,
        };
        let max_tokens = match &params.max_output_tokens {
            Some(value) => {
                max_tokens(value.as_ref(), "response.max_output_tokens", &self.defaults)?
            }
            None => self.session.max_output_tokens,
        };
        let options = ReplyOptions {
            modality,
            instructions: params.instructions.clone(),
            max_tokens: Some(max_tokens),
            out_of_band,
        };
        self.responses.requested = true;
        self.responses.metadata = params.metadata.clone();
        self.disarm_idle_timer();
        out.command(Command::CreateReply { options });
        Ok(())
    }

    pub(super) fn cancel_response(
        &mut self,
        response_id: Option<String>,
        out: &mut Outbox,
    ) -> Result<(), RealtimeError> {
        let target = match &response_id {
            Some(id) => self.responses.live.iter_mut().find(|r| &r.id == id),
            None => self.responses.live.last_mut(),
        };
        match target {
            Some(response) => response.cut = true,
            None if response_id.is_none() && self.responses.requested => {
                self.responses.cancel_next = true;
            }
            None => {
                let message = match response_id {
                    Some(id) => format!("no active response with id '{id}'"),
                    None => "there is no active response to cancel".to_string(),
                };
                let error = RealtimeError::state("response_cancel_not_active", message);
                return Err(error.param("response_id"));
            }
        }
        out.command(Command::CancelReply);
        Ok(())
    }

    pub(super) fn on_reply_started(
        &mut self,
        pipeline_id: Uuid,
        item_id: ItemId,
        options: ReplyOptions,
        out: &mut Outbox,
    ) {
        self.responses.requested = false;
        self.disarm_idle_timer();
        let previous = if options.out_of_band {
            None
        } else {
            self.items.last().map(str::to_string)
        };
        let state = ResponseState {
            pipeline_id,
            id: format!("resp_{}", pipeline_id.simple()),
            item_id,
            previous,
            modality: options.modality,
            out_of_band: options.out_of_band,
            max_output_tokens: options
                .max_tokens
                .unwrap_or(self.defaults.max_output_tokens),
            metadata: self.responses.metadata.take(),
            voice: self.session.voice.clone(),
            output: self.session.output,
            text: String::new(),
            transcript: String::new(),
            pieces: Vec::new(),
            frames: 0,
            cut: std::mem::take(&mut self.responses.cancel_next),
        };
        let conversation_id = &self.conversation_id;
        let ids = &mut self.ids;
        let response = state.json("in_progress", None, Vec::new(), None, conversation_id);
        out.text(ids.frame(&ServerEvent::ResponseCreated { response }));
        let item = state.item(ItemStatus::InProgress, Vec::new());
        state.item_events(ids, out, &item, false);
        out.text(ids.frame(&ServerEvent::ContentPartAdded {
            at: state.at(),
            part: state.part(),
        }));
        if !state.out_of_band {
            let logged = LoggedItem {
                role: ItemRole::Assistant,
                audio: state.modality == Modality::Audio,
                pieces: Vec::new(),
                audio_ms: 0,
            };
            self.items.add(&state.item_id, logged, None);
        }
        self.responses.live.push(state);
    }

    pub(super) fn on_reply_delta(&mut self, pipeline_id: Uuid, text: &str, out: &mut Outbox) {
        let Some(state) = self.responses.find(pipeline_id) else {
            return;
        };
        if state.modality != Modality::Text || state.cut {
            return;
        }
        state.text.push_str(text);
        let event = ServerEvent::TextDelta {
            at: state.at(),
            delta: text,
        };
        out.text(self.ids.frame(&event));
    }

    pub(super) fn on_spoken(&mut self, pipeline_id: Uuid, text: &str, out: &mut Outbox) {
        let Some(state) = self.responses.find(pipeline_id) else {
            return;
        };
        if state.modality != Modality::Audio || state.cut {
            return;
        }
        let delta = if state.transcript.is_empty() {
            text.to_string()
        } else {
            format!(" {text}")
        };
        state.transcript.push_str(&delta);
        let start_ms = state.frames * FRAME_MS;
        state.pieces.push(Piece {
            start_ms,
            text: text.to_string(),
        });
        let event = ServerEvent::TranscriptDelta {
            at: state.at(),
            delta: &delta,
        };
        out.text(self.ids.frame(&event));
    }

    pub(super) fn on_audio_started(&mut self, pipeline_id: Uuid) {
        self.responses.speaking = Some(pipeline_id);
    }

    pub(super) fn on_audio_done(&mut self, pipeline_id: Uuid) {
        if self.responses.speaking == Some(pipeline_id) {
            self.responses.speaking = None;
        }
    }

    pub(super) fn on_reply_audio(&mut self, frame: &[u8], out: &mut Outbox) {
        let Some(id) = self.responses.speaking else {
            return;
        };
        let Some(state) = self.responses.find(id) else {
            return;
        };
        if state.cut || state.modality != Modality::Audio {
            return;
        }
        state.frames += 1;
        let delta = base64::engine::general_purpose::STANDARD.encode(frame);
        let event = ServerEvent::AudioDelta {
            at: state.at(),
            delta: &delta,
        };
        out.text(self.ids.frame(&event));
    }

    pub(super) fn on_reply_finished(
        &mut self,
        pipeline_id: Uuid,
        status: &ReplyStatus,
        usage: Usage,
        out: &mut Outbox,
    ) {
        let Some(at) = self
            .responses
            .live
            .iter()
            .position(|r| r.pipeline_id == pipeline_id)
        else {
            return;
        };
        let state = self.responses.live.remove(at);
        let ids = &mut self.ids;
        match state.modality {
            Modality::Audio => {
                out.text(ids.frame(&ServerEvent::AudioDone { at: state.at() }));
                out.text(ids.frame(&ServerEvent::TranscriptDone {
                    at: state.at(),
                    transcript: &state.transcript,
                }));
            }
            Modality::Text => out.text(ids.frame(&ServerEvent::TextDone {
                at: state.at(),
                text: &state.text,
            })),
        }
        out.text(ids.frame(&ServerEvent::ContentPartDone {
            at: state.at(),
            part: state.part(),
        }));
        let item_status = match status {
            ReplyStatus::Completed => ItemStatus::Completed,
            _ => ItemStatus::Incomplete,
        };
        let item = state.item(item_status, state.content());
        state.item_events(ids, out, &item, true);
        let (status, details) = status_json(status);
        let response = state.json(
            status,
            details,
            vec![item],
            Some(usage.into()),
            &self.conversation_id,
        );
        out.text(ids.frame(&ServerEvent::ResponseDone { response }));
        if !state.out_of_band {
            let logged = LoggedItem {
                role: ItemRole::Assistant,
                audio: state.modality == Modality::Audio,
                audio_ms: state.frames * FRAME_MS,
                pieces: state.pieces,
            };
            self.items
                .add(&state.item_id, logged, state.previous.as_deref());
        }
        if self.responses.speaking == Some(pipeline_id) {
            self.responses.speaking = None;
        }
        self.arm_idle_timer(out);
    }

    /// The words and audio length of a reply still under way, for a truncation.
    pub(super) fn live_audio(&self, item_id: &str) -> Option<(Vec<Piece>, u64, Uuid)> {
        let state = self.responses.live.iter().find(|r| r.item_id == item_id)?;
        Some((
            state.pieces.clone(),
            state.frames * FRAME_MS,
            state.pipeline_id,
        ))
    }

    /// Stop sending a reply's output (it is being truncated).
    pub(super) fn cut_response(&mut self, pipeline_id: Uuid) {
        if let Some(state) = self.responses.find(pipeline_id) {
            state.cut = true;
        }
    }
}
