//! Chat messages and the ChatML prompt format SmolLM2 was tuned on:
//! `<|im_start|>role\ncontent<|im_end|>\n` per message, then `<|im_start|>assistant\n`
//! for the reply. The LLM actor hands a conversation's history to `EmbeddedModel` as
//! `&[ChatMessage]`; the same type serialises to the OpenAI `messages` array.
//!
//! The model's own template adds the system prompt "You are a helpful AI assistant
//! named SmolLM, trained by Hugging Face" when the first message is not a system one;
//! this builder adds nothing, so callers supply their own system message.

use serde::{Deserialize, Serialize};

use super::pretokenize::split_words;
use super::tokenizer::Tokenizer;

/// ChatML marker that opens a message.
pub const IM_START: &str = "<|im_start|>";
/// ChatML marker that closes a message; the model emits it to end its reply.
pub const IM_END: &str = "<|im_end|>";

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name as written in ChatML and the OpenAI API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Renders `messages` as ChatML text, ending with the open assistant turn.
pub fn build_prompt(messages: &[ChatMessage]) -> String {
    let mut prompt = String::new();
    for m in messages {
        prompt.push_str(IM_START);
        prompt.push_str(m.role.as_str());
        prompt.push('\n');
        prompt.push_str(&m.content);
        prompt.push_str(IM_END);
        prompt.push('\n');
    }
    prompt.push_str(IM_START);
    prompt.push_str("assistant\n");
    prompt
}

/// The ids of the two ChatML markers in a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMlIds {
    pub im_start: u32,
    pub im_end: u32,
}

impl ChatMlIds {
    /// Looks the markers up; `None` if the vocabulary is not a ChatML one.
    pub fn find(tokenizer: &Tokenizer) -> Option<Self> {
        Some(Self {
            im_start: tokenizer.special_id(IM_START)?,
            im_end: tokenizer.special_id(IM_END)?,
        })
    }
}

/// Whether the tokenizer, encoding `message` as [`encode_prompt`] does, cuts its text
/// at byte `at`: then the tokens of the text before and after `at` are the tokens of
/// the whole. True at either end.
pub fn splits_cleanly(message: &ChatMessage, at: usize) -> bool {
    if at == 0 || at == message.content.len() {
        return true;
    }
    let rendered = format!("{}\n{}", message.role.as_str(), message.content);
    let cut = rendered.len() - message.content.len() + at;
    let mut end = 0;
    for word in split_words(&rendered) {
        end += word.len();
        if end >= cut {
            return end == cut;
        }
    }
    false
}

/// The tokens of a message that is still open: its header and `text` so far, as
/// [`encode_prompt`] would begin it.
pub fn encode_open(tokenizer: &Tokenizer, ids: ChatMlIds, role: Role, text: &str) -> Vec<u32> {
    let mut out = vec![ids.im_start];
    out.extend(tokenizer.encode(&format!("{}\n{}", role.as_str(), text)));
    out
}

/// Tokenises whole messages as [`encode_prompt`] does, without the reply's header.
pub fn encode_messages(
    tokenizer: &Tokenizer,
    ids: ChatMlIds,
    messages: &[ChatMessage],
) -> Vec<u32> {
    let mut out = Vec::new();
    for m in messages {
        out.push(ids.im_start);
        out.extend(tokenizer.encode(&format!("{}\n{}", m.role.as_str(), m.content)));
        out.push(ids.im_end);
        out.extend(tokenizer.encode("\n"));
    }
    out
}

/// Tokenises the prompt [`build_prompt`] renders, except that message content is
/// encoded as plain text: a user who says `<|im_end|>` cannot close their own turn.
pub fn encode_prompt(tokenizer: &Tokenizer, ids: ChatMlIds, messages: &[ChatMessage]) -> Vec<u32> {
    let mut out = encode_messages(tokenizer, ids, messages);
    out.push(ids.im_start);
    out.extend(tokenizer.encode("assistant\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_chatml_ending_with_open_assistant_turn() {
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("Capital of France?"),
        ];
        assert_eq!(
            build_prompt(&messages),
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nCapital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_message_splits_cleanly_only_before_a_word() {
        let said = ChatMessage::user("What is the capital of France?");
        assert!(splits_cleanly(&said, "What is the capital".len()));
        assert!(
            !splits_cleanly(&said, "What is the capit".len()),
            "inside a word"
        );
        assert!(
            !splits_cleanly(&said, "What is the capital ".len()),
            "the space goes with the next word"
        );
        assert!(splits_cleanly(&said, 0) && splits_cleanly(&said, said.content.len()));
        let number = ChatMessage::user("in 15 minutes");
        assert!(
            splits_cleanly(&number, "in 1".len()),
            "every digit stands alone"
        );
    }

    #[test]
    fn empty_history_is_just_the_assistant_turn() {
        assert_eq!(build_prompt(&[]), "<|im_start|>assistant\n");
    }

    #[test]
    fn roles_serialise_in_lowercase() {
        assert_eq!(Role::Assistant.as_str(), "assistant");
        let json = serde_json::to_string(&ChatMessage::user("hi")).unwrap_or_default();
        assert_eq!(json, r#"{"role":"user","content":"hi"}"#);
    }
}
