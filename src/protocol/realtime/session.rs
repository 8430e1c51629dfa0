//! The Realtime session: its effective configuration, how a `session.update` changes
//! it (all or nothing), how it is shown (`session.created`, `session.updated`), and
//! what it means for the pipeline ([`PipelineSettings`]).
//!
//! Turn detection maps onto hearken's own: `server_vad` is voice activity with a fixed
//! silence (its threshold, padding and silence in place of `[vad]`'s), `semantic_vad`
//! is Smart Turn deciding at each pause (eagerness moves its threshold and the longest
//! pause it allows), `null` is manual turns.

use serde::Serialize;
use serde_json::Value;

use super::client::{
    FormatParam, MaxTokensParam, SessionParam, TranscriptionParam, TurnDetectionParam, VoiceParam,
};
use super::error::RealtimeError;
use crate::protocol::native::{AudioCodec, AudioFormat, G711_RATE};
use crate::protocol::pipeline::{
    Modality, PipelineSettings, ReplyOptions, SmartTurn, TurnDetection, TurnPolicy, VadSettings,
};

/// The only PCM rate of the Realtime API.
pub const PCM_RATE: u32 = 24_000;
/// Longest prefix padding accepted, in ms (the VAD keeps about this much before speech).
const MAX_PREFIX_PADDING_MS: u32 = 2_000;
/// Silence bounds for `silence_duration_ms`.
const SILENCE_MS: std::ops::RangeInclusive<u32> = 100..=10_000;
/// Bounds for `idle_timeout_ms`.
const IDLE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;
/// `max_output_tokens` bounds of the Realtime API.
const MAX_TOKENS: std::ops::RangeInclusive<u32> = 1..=4096;

/// What the server brings to every Realtime session.
#[derive(Debug, Clone)]
pub struct ServerDefaults {
    /// `?model=`, echoed.
    pub model: String,
    /// The installed voice (any requested voice is accepted; this one speaks).
    pub voice: String,
    pub instructions: String,
    /// `llm.max_tokens`: the longest reply the server writes.
    pub max_output_tokens: u32,
    /// `[vad]` as configured (Smart Turn included when its model is loaded).
    pub vad: VadSettings,
    /// Replies can be spoken (a TTS is configured).
    pub speaks: bool,
    pub max_instructions_bytes: usize,
    /// Longest text of an item a client creates.
    pub max_item_bytes: usize,
    /// Most audio one `input_audio_buffer.append` may carry.
    pub max_append_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eagerness {
    Low,
    Medium,
    High,
    Auto,
}

impl Eagerness {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "low" => Eagerness::Low,
            "medium" => Eagerness::Medium,
            "high" => Eagerness::High,
            "auto" => Eagerness::Auto,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Eagerness::Low => "low",
            Eagerness::Medium => "medium",
            Eagerness::High => "high",
            Eagerness::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detection {
    ServerVad {
        threshold: f32,
        prefix_padding_ms: u32,
        silence_duration_ms: u32,
        idle_timeout_ms: Option<u64>,
    },
    SemanticVad {
        eagerness: Eagerness,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnDetectionState {
    pub detection: Detection,
    pub create_response: bool,
    pub interrupt_response: bool,
}

/// The effective session configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub instructions: String,
    pub modality: Modality,
    pub input: AudioFormat,
    pub output: AudioFormat,
    pub voice: Value,
    pub turn_detection: Option<TurnDetectionState>,
    pub transcription: Option<TranscriptionParam>,
    pub max_output_tokens: u32,
}

impl SessionState {
    pub fn new(defaults: &ServerDefaults) -> Self {
        let detection = match defaults.vad.smart {
            Some(_) => Detection::SemanticVad {
                eagerness: Eagerness::Auto,
            },
            None => Detection::ServerVad {
                threshold: defaults.vad.start_threshold,
                prefix_padding_ms: defaults.vad.pad_ms,
                silence_duration_ms: defaults.vad.min_silence_ms,
                idle_timeout_ms: None,
            },
        };
        let pcm = AudioFormat::new(AudioCodec::Pcm16, PCM_RATE);
        SessionState {
            instructions: defaults.instructions.clone(),
            modality: if defaults.speaks {
                Modality::Audio
            } else {
                Modality::Text
            },
            input: pcm,
            output: pcm,
            voice: Value::from(defaults.voice.clone()),
            turn_detection: Some(TurnDetectionState {
                detection,
                create_response: true,
                interrupt_response: true,
            }),
            transcription: None,
            max_output_tokens: defaults.max_output_tokens,
        }
    }

    /// The session after `update`, or the first error (the session is unchanged).
    /// `audio_sent`: the input format can no longer change.
    pub fn updated(
        &self,
        update: &SessionParam,
        defaults: &ServerDefaults,
        audio_sent: bool,
    ) -> Result<SessionState, RealtimeError> {
        let mut next = self.clone();
        match update.kind.as_deref() {
            None | Some("realtime") => {}
            Some("transcription") => {
                let message = "transcription sessions are not supported; use type \"realtime\"";
                return Err(RealtimeError::unsupported("session.type", message));
            }
            Some(other) => {
                let message =
                    format!("Invalid value: '{other}'. Supported values are: 'realtime'.");
                return Err(RealtimeError::value("session.type", message));
            }
        }
        if update.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            let message = "tools are not supported yet: hearken's models do not call functions";
            return Err(RealtimeError::unsupported("session.tools", message));
        }
        if let Some(instructions) = &update.instructions {
            if instructions.len() > defaults.max_instructions_bytes {
                let message = format!(
                    "instructions are {} bytes; the limit is {}",
                    instructions.len(),
                    defaults.max_instructions_bytes
                );
                let error = RealtimeError::invalid(
                    crate::protocol::wire::Fault::PromptTooLarge,
                    "too_large",
                    message,
                );
                return Err(error.param("session.instructions"));
            }
            next.instructions = instructions.clone();
        }
        if let Some(modalities) = &update.output_modalities {
            next.modality = modality(modalities, "session.output_modalities", defaults)?;
        }
        if let Some(max) = &update.max_output_tokens {
            next.max_output_tokens =
                max_tokens(max.as_ref(), "session.max_output_tokens", defaults)?;
        }
        let audio = update.audio.as_ref();
        if let Some(input) = audio.and_then(|a| a.input.as_ref()) {
            if let Some(format) = &input.format {
                let format = audio_format(format, "session.audio.input.format")?;
                if audio_sent && format != self.input {
                    let message = "the input format cannot change once audio has been sent";
                    return Err(RealtimeError::value("session.audio.input.format", message));
                }
                next.input = format;
            }
            if let Some(detection) = &input.turn_detection {
                next.turn_detection = detection
                    .as_ref()
                    .map(|d| turn_detection(d, defaults))
                    .transpose()?;
            }
            if let Some(transcription) = &input.transcription {
                next.transcription = transcription.clone().map(|mut t| {
                    t.model.get_or_insert_with(|| "moonshine-base-en".into());
                    t
                });
            }
        }
        if let Some(output) = audio.and_then(|a| a.output.as_ref()) {
            if let Some(format) = &output.format {
                next.output = audio_format(format, "session.audio.output.format")?;
            }
            if let Some(voice) = &output.voice {
                next.voice = match voice {
                    VoiceParam::Name(name) => Value::from(name.clone()),
                    VoiceParam::Custom { id } => serde_json::json!({ "id": id }),
                };
            }
        }
        Ok(next)
    }

    /// What the pipeline does for this session.
    pub fn pipeline(&self, defaults: &ServerDefaults) -> PipelineSettings {
        let detection = match self.turn_detection.map(|t| t.detection) {
            None => TurnDetection::Manual,
            Some(Detection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                ..
            }) => TurnDetection::Vad(VadSettings {
                start_threshold: threshold,
                end_threshold: (threshold - 0.15).max(0.05),
                pad_ms: prefix_padding_ms,
                min_silence_ms: silence_duration_ms,
                smart: None,
            }),
            Some(Detection::SemanticVad { eagerness }) => {
                TurnDetection::Vad(semantic(eagerness, &defaults.vad))
            }
        };
        let (create_response, interrupt_response) =
            self.turn_detection.map_or((false, false), |t| {
                (t.create_response, t.interrupt_response)
            });
        PipelineSettings {
            turn: TurnPolicy {
                detection,
                create_response,
                interrupt_response,
                reply: ReplyOptions {
                    modality: self.modality,
                    instructions: None,
                    max_tokens: Some(self.max_output_tokens),
                    out_of_band: false,
                },
            },
            input: self.input,
            output: self.output,
        }
    }

    /// `server_vad`'s idle timeout, if one is set.
    pub fn idle_timeout_ms(&self) -> Option<u64> {
        match self.turn_detection?.detection {
            Detection::ServerVad {
                idle_timeout_ms, ..
            } => idle_timeout_ms,
            Detection::SemanticVad { .. } => None,
        }
    }

    /// The session object of `session.created` / `session.updated`.
    pub fn render<'a>(
        &'a self,
        defaults: &'a ServerDefaults,
        id: &'a str,
        conversation: (&'a str, bool),
    ) -> SessionJson<'a> {
        let turn_detection = self.turn_detection.map(|t| match t.detection {
            Detection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                idle_timeout_ms,
            } => TurnDetectionJson {
                kind: "server_vad",
                threshold: Some(threshold),
                prefix_padding_ms: Some(prefix_padding_ms),
                silence_duration_ms: Some(silence_duration_ms),
                idle_timeout_ms: Some(idle_timeout_ms),
                eagerness: None,
                create_response: t.create_response,
                interrupt_response: t.interrupt_response,
            },
            Detection::SemanticVad { eagerness } => TurnDetectionJson {
                kind: "semantic_vad",
                threshold: None,
                prefix_padding_ms: None,
                silence_duration_ms: None,
                idle_timeout_ms: None,
                eagerness: Some(eagerness.as_str()),
                create_response: t.create_response,
                interrupt_response: t.interrupt_response,
            },
        });
        SessionJson {
            kind: "realtime",
            object: "realtime.session",
            id,
            conversation_id: conversation.0,
            resumed: conversation.1,
            model: &defaults.model,
            output_modalities: [modality_name(self.modality)],
            instructions: &self.instructions,
            audio: AudioJson {
                input: InputJson {
                    format: FormatJson::of(self.input),
                    noise_reduction: None,
                    transcription: self.transcription.as_ref().map(|t| TranscriptionJson {
                        model: t.model.as_deref().unwrap_or("moonshine-base-en"),
                        language: t.language.as_deref(),
                        prompt: t.prompt.as_deref(),
                    }),
                    turn_detection,
                },
                output: OutputJson {
                    format: FormatJson::of(self.output),
                    voice: &self.voice,
                    speed: 1.0,
                },
            },
            max_output_tokens: self.max_output_tokens,
            tools: [],
            tool_choice: "auto",
            tracing: None,
            truncation: "auto",
            prompt: None,
            include: None,
        }
    }
}

/// Smart Turn settings for an eagerness: `low` waits longer (a higher bar for
/// "complete", twice the pause), `high` answers sooner (a lower bar, half the pause).
fn semantic(eagerness: Eagerness, vad: &VadSettings) -> VadSettings {
    let smart = vad.smart.map(|smart| match eagerness {
        Eagerness::Low => SmartTurn {
            threshold: (smart.threshold + 0.2).min(0.95),
            max_silence_ms: smart.max_silence_ms * 2,
        },
        Eagerness::High => SmartTurn {
            threshold: (smart.threshold - 0.2).max(0.05),
            max_silence_ms: (smart.max_silence_ms / 2).max(vad.min_silence_ms),
        },
        Eagerness::Medium | Eagerness::Auto => smart,
    });
    VadSettings { smart, ..*vad }
}

pub fn modality_name(modality: Modality) -> &'static str {
    match modality {
        Modality::Audio => "audio",
        Modality::Text => "text",
    }
}

/// `["audio"]` or `["text"]`.
pub fn modality(
    names: &[String],
    param: &str,
    defaults: &ServerDefaults,
) -> Result<Modality, RealtimeError> {
    match names {
        [one] if one == "text" => Ok(Modality::Text),
        [one] if one == "audio" && defaults.speaks => Ok(Modality::Audio),
        [one] if one == "audio" => Err(RealtimeError::unsupported(
            param,
            "this server has no voice configured (tts.enabled = false): use [\"text\"]",
        )),
        _ => Err(RealtimeError::value(
            param,
            "output_modalities must be [\"audio\"] or [\"text\"]",
        )),
    }
}

/// A `max_output_tokens` value, capped at the server's `llm.max_tokens`.
pub fn max_tokens(
    value: Option<&MaxTokensParam>,
    param: &str,
    defaults: &ServerDefaults,
) -> Result<u32, RealtimeError> {
    let cap = defaults.max_output_tokens;
    match value {
        None => Ok(cap),
        Some(MaxTokensParam::Word(word)) if word == "inf" => Ok(cap),
        Some(MaxTokensParam::Count(count)) if MAX_TOKENS.contains(count) => Ok((*count).min(cap)),
        Some(_) => Err(RealtimeError::value(
            param,
            "max_output_tokens must be an integer from 1 to 4096, or \"inf\"",
        )),
    }
}

fn audio_format(format: &FormatParam, param: &str) -> Result<AudioFormat, RealtimeError> {
    match (format.kind.as_str(), format.rate) {
        ("audio/pcm", None | Some(PCM_RATE)) => Ok(AudioFormat::new(AudioCodec::Pcm16, PCM_RATE)),
        ("audio/pcm", Some(_)) => Err(RealtimeError::value(
            &format!("{param}.rate"),
            "audio/pcm is 24000 Hz only",
        )),
        ("audio/pcmu", _) => Ok(AudioFormat::new(AudioCodec::Pcmu, G711_RATE)),
        ("audio/pcma", _) => Ok(AudioFormat::new(AudioCodec::Pcma, G711_RATE)),
        (other, _) => Err(RealtimeError::value(
            &format!("{param}.type"),
            format!(
                "Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu', \
                 'audio/pcma'."
            ),
        )),
    }
}

fn turn_detection(
    param: &TurnDetectionParam,
    defaults: &ServerDefaults,
) -> Result<TurnDetectionState, RealtimeError> {
    let at = |field: &str| format!("session.audio.input.turn_detection.{field}");
    let detection = match param.kind.as_str() {
        "server_vad" => {
            let threshold = param.threshold.unwrap_or(defaults.vad.start_threshold);
            if !(0.0..=1.0).contains(&threshold) {
                let message = "threshold must be between 0.0 and 1.0";
                return Err(RealtimeError::value(&at("threshold"), message));
            }
            let prefix_padding_ms = param.prefix_padding_ms.unwrap_or(defaults.vad.pad_ms);
            if prefix_padding_ms > MAX_PREFIX_PADDING_MS {
                let message = format!("prefix_padding_ms must be at most {MAX_PREFIX_PADDING_MS}");
                return Err(RealtimeError::value(&at("prefix_padding_ms"), message));
            }
            let silence_duration_ms = param
                .silence_duration_ms
                .unwrap_or(defaults.vad.min_silence_ms);
            if !SILENCE_MS.contains(&silence_duration_ms) {
                let message = "silence_duration_ms must be from 100 to 10000";
                return Err(RealtimeError::value(&at("silence_duration_ms"), message));
            }
            let idle_timeout_ms = param.idle_timeout_ms.flatten();
            if idle_timeout_ms.is_some_and(|ms| !IDLE_TIMEOUT_MS.contains(&ms)) {
                let message = "idle_timeout_ms must be from 1000 to 600000, or null";
                return Err(RealtimeError::value(&at("idle_timeout_ms"), message));
            }
            Detection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                idle_timeout_ms,
            }
        }
        "semantic_vad" => {
            let word = param.eagerness.as_deref().unwrap_or("auto");
            let Some(eagerness) = Eagerness::parse(word) else {
                let message = format!(
                    "Invalid value: '{word}'. Supported values are: 'low', 'medium', 'high', \
                     'auto'."
                );
                return Err(RealtimeError::value(&at("eagerness"), message));
            };
            Detection::SemanticVad { eagerness }
        }
        other => {
            let message = format!(
                "Invalid value: '{other}'. Supported values are: 'server_vad', 'semantic_vad'."
            );
            return Err(RealtimeError::value(&at("type"), message));
        }
    };
    Ok(TurnDetectionState {
        detection,
        create_response: param.create_response.unwrap_or(true),
        interrupt_response: param.interrupt_response.unwrap_or(true),
    })
}

#[derive(Debug, Serialize)]
pub struct FormatJson {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<u32>,
}

impl FormatJson {
    pub fn of(format: AudioFormat) -> Self {
        match format.codec {
            AudioCodec::Pcmu => FormatJson {
                kind: "audio/pcmu",
                rate: None,
            },
            AudioCodec::Pcma => FormatJson {
                kind: "audio/pcma",
                rate: None,
            },
            AudioCodec::Pcm16 | AudioCodec::Opus => FormatJson {
                kind: "audio/pcm",
                rate: Some(PCM_RATE),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TurnDetectionJson {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix_padding_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silence_duration_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_ms: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eagerness: Option<&'static str>,
    create_response: bool,
    interrupt_response: bool,
}

#[derive(Debug, Serialize)]
pub struct TranscriptionJson<'a> {
    model: &'a str,
    language: Option<&'a str>,
    prompt: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct InputJson<'a> {
    format: FormatJson,
    noise_reduction: Option<()>,
    transcription: Option<TranscriptionJson<'a>>,
    turn_detection: Option<TurnDetectionJson>,
}

#[derive(Debug, Serialize)]
pub struct OutputJson<'a> {
    format: FormatJson,
    voice: &'a Value,
    speed: f32,
}

#[derive(Debug, Serialize)]
pub struct AudioJson<'a> {
    input: InputJson<'a>,
    output: OutputJson<'a>,
}

/// The session object, as the GA API shows it.
#[derive(Debug, Serialize)]
pub struct SessionJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    object: &'static str,
    id: &'a str,
    /// hearken: the conversation (`?conversation_id=` resumes it), and whether this
    /// session resumed it.
    conversation_id: &'a str,
    resumed: bool,
    model: &'a str,
    output_modalities: [&'static str; 1],
    instructions: &'a str,
    audio: AudioJson<'a>,
    max_output_tokens: u32,
    tools: [(); 0],
    tool_choice: &'static str,
    tracing: Option<()>,
    truncation: &'static str,
    prompt: Option<()>,
    include: Option<()>,
}
