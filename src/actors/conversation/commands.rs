//! What the client's protocol asks of the conversation ([`Command`]), carried out by
//! the child it concerns: input to the VAD, settings to the VAD and TTS, items to the
//! LLM actor (the history's one writer), spoken items to `spoken.rs`, replies to
//! `reply.rs`.

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::messages::{
    ClearSpeech, ClientCommand, ConfigureInput, EditHistory, FlushSpeech, SetOutputFormat,
};
use crate::protocol::pipeline::CancelReason;
use crate::protocol::Command;

impl Handler<ClientCommand> for ConversationActor {
    type Result = ();

    fn handle(&mut self, command: ClientCommand, _: &mut Context<Self>) {
        match command.command {
            Command::CommitInput => {
                if let Some(vad) = self.children.vad.as_ref() {
                    vad.do_send(FlushSpeech);
                }
            }
            Command::ClearInput => {
                if let Some(vad) = self.children.vad.as_ref() {
                    vad.do_send(ClearSpeech);
                }
                self.clear_input();
            }
            Command::CancelReply => self.cancel_reply(CancelReason::Client),
            Command::SetSystemPrompt { prompt } => {
                let id = self.params.conversation_id;
                self.services.conversations.set_system_prompt(id, prompt);
            }
            Command::Configure { settings } => {
                if let Some(vad) = self.children.vad.as_ref() {
                    vad.do_send(ConfigureInput {
                        detection: settings.turn.detection,
                        format: settings.input,
                    });
                }
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SetOutputFormat {
                        format: settings.output,
                    });
                }
                // Children restarted later start from the session's parameters.
                self.params.input = settings.input;
                self.params.output = settings.output;
                self.policy = settings.turn;
            }
            Command::AddItem {
                item,
                previous,
                reply_to,
            } => self.edit_history(EditHistory::Add {
                item,
                previous,
                reply_to,
                announce: true,
            }),
            Command::AddSpokenItem {
                item_id,
                audio,
                format,
                previous,
                reply_to,
            } => self.add_spoken_item(item_id, audio, format, previous, reply_to),
            Command::DeleteItem { item_id, reply_to } => {
                self.edit_history(EditHistory::Delete { item_id, reply_to })
            }
            Command::TruncateItem {
                item_id,
                text,
                reply_to,
            } => self.edit_history(EditHistory::Truncate {
                item_id,
                text,
                reply_to,
            }),
            Command::RetrieveItem { item_id, reply_to } => {
                self.edit_history(EditHistory::Retrieve { item_id, reply_to })
            }
            Command::CreateReply { options } => self.respond(None, options),
            Command::InjectFailure { role, mode } => self.inject_failure(&role, mode),
        }
    }
}

impl ConversationActor {
    fn edit_history(&self, edit: EditHistory) {
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(edit);
        }
    }
}
