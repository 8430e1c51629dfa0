//! End-to-end tests of the embedded LLM on the real SmolLM2-135M-Instruct GGUF
//! (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched by scripts/setup.sh, or
//! `HEARKEN_LLM_MODEL`). About 5 s in release. The model loads once and the tests share
//! it behind a mutex.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use hearken::llm::chat::{build_prompt, encode_prompt, ChatMlIds};
use hearken::llm::{
    ChatMessage, EmbeddedModel, FinishReason, GenerationOutcome, GenerationParams, LlmError,
};

fn model() -> MutexGuard<'static, EmbeddedModel> {
    hearken::llm::embedded::pin_candle_threads(1);
    static MODEL: OnceLock<Mutex<EmbeddedModel>> = OnceLock::new();
    let path = std::env::var_os("HEARKEN_LLM_MODEL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    let model = MODEL.get_or_init(|| match EmbeddedModel::load(&path) {
        Ok(m) => Mutex::new(m),
        Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
    });
    model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ask(
    model: &mut EmbeddedModel,
    question: &str,
    params: &GenerationParams,
) -> (String, GenerationOutcome) {
    let messages = [ChatMessage::user(question)];
    let mut reply = String::new();
    let outcome = model
        .generate(&messages, params, &mut |piece| {
            reply.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    (reply, outcome)
}

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    }
}

#[test]
fn answers_capital_of_france() {
    let mut model = model();
    let (reply, outcome) = ask(&mut model, "What is the capital of France?", &params(48));
    assert!(reply.contains("Paris"), "reply: {reply:?}");
    assert!(outcome.first_token_ms.is_some());
    assert!(!outcome.cancelled);
    eprintln!("{reply:?} {outcome:?}");
}

#[test]
fn cancelling_after_three_tokens_delivers_exactly_three() {
    let mut model = model();
    let messages = [ChatMessage::user("Tell me a long story about a dragon.")];
    let mut pieces = Vec::new();
    let outcome = model
        .generate(&messages, &params(64), &mut |piece| {
            pieces.push(piece.to_string());
            if pieces.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    assert_eq!(outcome.tokens, 3);
    assert!(outcome.cancelled);
    assert_eq!(outcome.finish_reason, FinishReason::Cancelled);
}

#[test]
fn consecutive_calls_start_from_a_clean_cache() {
    let mut model = model();
    let question = "What is the capital of France?";
    let (first, a) = ask(&mut model, question, &params(24));
    // A different, longer conversation in between: a stale cache would shift positions.
    let (other, _) = ask(
        &mut model,
        "Name three colours of the rainbow.",
        &params(24),
    );
    let (again, b) = ask(&mut model, question, &params(24));
    assert!(!other.is_empty());
    assert_eq!(
        first, again,
        "greedy decoding of the same prompt must repeat exactly"
    );
    assert_eq!((a.tokens, a.prompt_tokens), (b.tokens, b.prompt_tokens));
}

#[test]
fn stops_at_max_tokens_and_rejects_overlong_prompts() {
    let mut model = model();
    let (_, outcome) = ask(
        &mut model,
        "Count from one to one hundred in words.",
        &params(5),
    );
    assert_eq!(outcome.tokens, 5);
    assert_eq!(outcome.finish_reason, FinishReason::Length);

    let huge = "word ".repeat(model.context_limit());
    let result = model.generate(&[ChatMessage::user(huge)], &params(5), &mut |_| {
        ControlFlow::Continue(())
    });
    assert!(
        matches!(result, Err(LlmError::PromptTooLong { .. })),
        "{result:?}"
    );
}

#[test]
fn tokenizer_matches_hugging_face_on_the_real_vocabulary() {
    let model = model();
    let tok = model.tokenizer();
    // Expected ids from HF `tokenizers` 0.23 built from the same GGUF vocabulary.
    let cases: [(&str, &[u32]); 3] = [
        (
            "What is the capital of France?",
            &[1780, 314, 260, 3575, 282, 4649, 47],
        ),
        (
            "I'd've thought it's 3.14159, isn't it? DON'T SHOUT",
            &[
                57, 6737, 3543, 2275, 357, 506, 216, 35, 30, 33, 36, 33, 37, 41, 28, 3247, 982,
                357, 47, 422, 2154, 23, 68, 334, 21953,
            ],
        ),
        (
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
            &[1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198],
        ),
    ];
    for (text, ids) in cases {
        assert_eq!(tok.encode_with_specials(text), ids, "{text:?}");
        assert_eq!(
            tok.decode(ids),
            text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        );
    }
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
    assert_eq!(tok.special_id("<|im_end|>"), Some(2));
    let text = "naïve café — “quotes” 😀👍🏽 日本語のテキスト\n\ttabs  ";
    assert_eq!(tok.decode(&tok.encode(text)), text);

    let ids = ChatMlIds::find(tok).unwrap();
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi there"),
    ];
    assert_eq!(
        encode_prompt(tok, ids, &messages),
        tok.encode_with_specials(&build_prompt(&messages))
    );
}

/// The conversation so far, as the LLM actor would send it.
fn conversation(turns: &[(&str, Option<&str>)]) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::system(hearken::config::DEFAULT_SYSTEM_PROMPT)];
    for (user, assistant) in turns {
        messages.push(ChatMessage::user(*user));
        messages.extend(assistant.map(ChatMessage::assistant));
    }
    messages
}

fn reply_for(
    model: &mut EmbeddedModel,
    id: Option<uuid::Uuid>,
    messages: &[ChatMessage],
) -> (String, GenerationOutcome) {
    let mut reply = String::new();
    let outcome = model
        .generate_for(id, messages, &params(24), &|| false, &mut |piece| {
            reply.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    (reply, outcome)
}

#[test]
fn a_kept_turn_reads_only_new_tokens_and_answers_as_a_whole_prompt_would() {
    let mut fresh = model();
    let mut kept = fresh.clone().with_kv_cache(64 << 20);
    let id = uuid::Uuid::new_v4();
    let first = conversation(&[("What is the capital of France?", None)]);
    let (reply1, outcome1) = reply_for(&mut kept, Some(id), &first);
    assert!(kept.kv_cache_bytes() > 0, "the finished turn is kept");
    let second = conversation(&[
        ("What is the capital of France?", Some(&reply1)),
        ("And of Spain?", None),
    ]);
    let (reply2, outcome2) = reply_for(&mut kept, Some(id), &second);
    let chatml = ChatMlIds::find(kept.tokenizer()).expect("chatml");
    let question = encode_prompt(kept.tokenizer(), chatml, &second[3..]).len();
    assert_eq!(
        outcome2.prompt_tokens - outcome2.cached_tokens,
        question,
        "only the new question is read (of {}; the first turn read {})",
        outcome2.prompt_tokens,
        outcome1.prompt_tokens
    );
    let (whole, outcome) = reply_for(&mut fresh, None, &second);
    assert_eq!(outcome.cached_tokens, 0);
    assert_eq!(reply2, whole, "kept state changes nothing in the reply");
    // Another conversation starts from the shared system prompt, never from this one.
    let other = conversation(&[("And of Spain?", None)]);
    let (_, outcome3) = reply_for(&mut kept, Some(uuid::Uuid::new_v4()), &other);
    let header = encode_prompt(kept.tokenizer(), chatml, &[]).len();
    let system = encode_prompt(kept.tokenizer(), chatml, &other[..1]).len() - header;
    assert_eq!(
        outcome3.cached_tokens, system,
        "the system prompt is shared"
    );
}

#[test]
fn every_turn_of_a_conversation_reads_only_its_question() {
    let mut kept = model().clone().with_kv_cache(64 << 20);
    let chatml = ChatMlIds::find(kept.tokenizer()).expect("chatml");
    let id = uuid::Uuid::new_v4();
    let questions = [
        "What is the capital city of France?",
        "How far away is the moon from the earth?",
        "What will the weather be like tomorrow?",
        "Set a timer for ten minutes.",
        "How do you say thank you in Spanish?",
    ];
    let mut history: Vec<ChatMessage> =
        vec![ChatMessage::system(hearken::config::DEFAULT_SYSTEM_PROMPT)];
    for (turn, question) in questions.iter().enumerate() {
        history.push(ChatMessage::user(*question));
        let mut reply = String::new();
        let outcome = kept
            .generate_for(Some(id), &history, &params(64), &|| false, &mut |piece| {
                reply.push_str(piece);
                ControlFlow::Continue(())
            })
            .expect("reply");
        if turn > 0 {
            let question_tokens =
                encode_prompt(kept.tokenizer(), chatml, &history[history.len() - 1..]).len();
            assert_eq!(
                outcome.prompt_tokens - outcome.cached_tokens,
                question_tokens,
                "turn {turn} read more than its question; reply before: {:?}",
                history[history.len() - 2].content
            );
        }
        history.push(ChatMessage::assistant(reply));
    }
}

#[test]
fn words_read_ahead_leave_only_the_rest_of_the_turn_and_change_nothing() {
    let mut fresh = model();
    let mut kept = fresh.clone().with_kv_cache(64 << 20);
    let chatml = ChatMlIds::find(kept.tokenizer()).expect("chatml");
    let id = uuid::Uuid::new_v4();
    let first = conversation(&[("What is the capital of France?", None)]);
    let (reply1, _) = reply_for(&mut kept, Some(id), &first);
    let history = conversation(&[("What is the capital of France?", Some(&reply1))]);
    let turn = "And what is the capital of Spain?";

    // Two partials while the user speaks: the second goes on from the first.
    let read = |model: &mut EmbeddedModel, history: &[ChatMessage], words: &str| {
        model
            .read_ahead_for(id, history, words, &|| false)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let first_words = read(&mut kept, &history, "And what is");
    assert!(
        first_words > 3,
        "the turn's header and words: {first_words}"
    );
    let more = read(&mut kept, &history, "And what is the capital");
    let words = kept.tokenizer().encode(" the capital").len();
    assert_eq!(
        more, words,
        "the second read-ahead reads only its new words"
    );
    let again = read(&mut kept, &history, "And what is the capital");
    assert_eq!(again, 0, "already read");

    let mut second = history.clone();
    second.push(ChatMessage::user(turn));
    let (reply2, outcome2) = reply_for(&mut kept, Some(id), &second);
    let rest = kept.tokenizer().encode(" of Spain?").len() + 1 // <|im_end|>
        + kept.tokenizer().encode("\n").len()
        + encode_prompt(kept.tokenizer(), chatml, &[]).len();
    assert_eq!(
        outcome2.prompt_tokens - outcome2.cached_tokens,
        rest,
        "the reply reads only the turn's last words and its own header"
    );
    let (whole, outcome) = reply_for(&mut fresh, None, &second);
    assert_eq!(outcome.cached_tokens, 0);
    assert_eq!(reply2, whole, "reading ahead changes nothing in the reply");

    // Words the turn went on with inside a word are not used: their tokens differ.
    let mut third = second.clone();
    third.push(ChatMessage::assistant(reply2));
    assert!(read(&mut kept, &third, "Tell") > 0);
    third.push(ChatMessage::user("Tellurium is what?"));
    let (_, outcome3) = reply_for(&mut kept, Some(id), &third);
    let question = encode_prompt(kept.tokenizer(), chatml, &third[third.len() - 1..]).len();
    assert_eq!(outcome3.prompt_tokens - outcome3.cached_tokens, question);
}
