//! Spoken items on the recogniser: the audio of a `conversation.item.create` is one
//! final segment with no VAD behind it. It takes a place among the conversation's
//! queued segments (the same bound); an encoder thread of the STT batcher decodes and
//! resamples it before encoding, so no arbiter touches a sample. The answer names the
//! item, not a place in the input stream.

use actix::prelude::*;

use super::{SttActor, MAX_QUEUED_SEGMENTS};
use crate::actors::messages::{ChildEvent, TranscribeItem};
use crate::audio::clip;
use crate::workers::{JobError, Priority, SttRequest};

impl SttActor {
    fn item_answer(&self, item_id: String, text: Result<String, String>, stt_ms: u64) {
        self.parent.do_send(ChildEvent::ItemTranscript {
            item_id,
            text,
            stt_ms,
        });
    }
}

impl Handler<TranscribeItem> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: TranscribeItem, ctx: &mut Context<Self>) {
        let TranscribeItem {
            item_id,
            audio,
            format,
        } = msg;
        let Some(stt) = self.env.services.stt.as_ref() else {
            let message = "speech recognition is off (stt.enabled = false)".to_string();
            return self.item_answer(item_id, Err(message), 0);
        };
        if self.queued >= MAX_QUEUED_SEGMENTS {
            self.env.services.metrics.overloaded.inc();
            let message = "speech recognition is behind; the item was not transcribed";
            return self.item_answer(item_id, Err(message.to_string()), 0);
        }
        let request = SttRequest {
            audio: Box::new(move || clip::to_model_rate(format, &audio).map_err(|e| e.to_string())),
            guess: Vec::new(),
            stop: None,
        };
        let job = stt.submit(
            Priority::Urgent,
            &self.env.cancel,
            self.link.hold(),
            request,
        );
        let answer = match job {
            Ok(answer) => answer,
            Err(error) => {
                if matches!(error, JobError::Overloaded { .. }) {
                    self.env.services.metrics.overloaded.inc();
                }
                let message = format!("the item was not transcribed: {error}");
                return self.item_answer(item_id, Err(message), 0);
            }
        };
        self.queued += 1;
        ctx.spawn(answer.into_actor(self).map(move |answer, act, _| {
            act.queued -= 1;
            let (text, elapsed) = match answer {
                // Stopped: the conversation is ending, nobody waits for the words.
                Ok(Ok(None)) | Ok(Err(JobError::Cancelled)) => return,
                Ok(Ok(Some(t))) => (Ok(t.text), t.elapsed),
                Ok(Err(error)) => (Err(error.to_string()), Default::default()),
                Err(_) => (
                    Err("the STT batcher dropped the job".into()),
                    Default::default(),
                ),
            };
            let metrics = &act.env.services.metrics;
            metrics.stt_seconds.observe(elapsed.as_secs_f64());
            if text.as_ref().is_ok_and(|t| !t.is_empty()) {
                metrics.transcripts.inc();
            }
            let text = text.map_err(|error| format!("speech recognition failed: {error}"));
            act.item_answer(item_id, text, elapsed.as_millis() as u64);
        }));
    }
}
