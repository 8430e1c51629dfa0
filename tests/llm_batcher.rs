//! The LLM batcher on the real SmolLM2 GGUF, with fewer rows per pass than replies:
//! replies past `max_batch` sit passes out (fewest tokens first) and come back, and each
//! still replies exactly as it does alone.

mod llm_support;

use std::sync::Arc;

use hearken::llm::backend::LlmEvent;
use hearken::llm::{ChatMessage, EmbeddedModel, GenerationParams};
use hearken::metrics::Metrics;
use hearken::workers::llm_batcher::{LlmBatcher, LlmWork, PassShape};
use hearken::workers::{CancelToken, Priority};
use tokio::sync::mpsc;
use uuid::Uuid;

use llm_support::{smollm_path, QUESTIONS};

fn batcher(max_batch: usize, metrics: &Arc<Metrics>) -> LlmBatcher {
    hearken::llm::embedded::pin_candle_threads(1);
    let path = smollm_path();
    let init = Arc::new(move || EmbeddedModel::load(&path).map_err(|e| e.to_string()));
    let shape = PassShape {
        rows: max_batch,
        prompt_chunks: 4,
    };
    LlmBatcher::new(1, 64, shape, Arc::clone(metrics), init, |loaded| {
        loaded.expect("the model loads")
    })
    .expect("the batcher's thread starts")
}

/// Queue a reply to `question`; its events arrive on the returned channel.
fn ask(batcher: &LlmBatcher, owner: &CancelToken, question: &str) -> mpsc::Receiver<LlmEvent> {
    let (events, receiver) = mpsc::channel(64);
    let work = LlmWork::Reply {
        messages: vec![
            ChatMessage::system("You are a helpful voice assistant. Answer in one sentence."),
            ChatMessage::user(question),
        ],
        params: GenerationParams {
            max_tokens: 40,
            ..GenerationParams::default()
        },
        events,
    };
    let stop = CancelToken::new();
    batcher
        .submit(
            Priority::Urgent,
            Uuid::new_v4(),
            owner,
            stop,
            Box::new(()),
            work,
        )
        .expect("queued");
    receiver
}

/// The whole reply, once it finishes.
fn text_of(mut events: mpsc::Receiver<LlmEvent>) -> String {
    let mut text = String::new();
    while let Some(event) = events.blocking_recv() {
        match event {
            LlmEvent::Delta(piece) => text.push_str(&piece),
            LlmEvent::Finished(_) => return text,
            LlmEvent::Failed(error) => panic!("reply failed: {error}"),
        }
    }
    panic!("the reply ended without finishing: {text:?}")
}

fn sequences_with_role(metrics: &Metrics, role: &str) -> f64 {
    let series = format!("hearken_llm_pass_sequences_total{{role=\"{role}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn replies_past_the_row_budget_wait_their_turn_and_reply_as_alone() {
    let metrics = Metrics::new();
    let batcher = batcher(2, &metrics);
    let owner = CancelToken::new();
    let alone: Vec<String> = QUESTIONS
        .iter()
        .map(|q| text_of(ask(&batcher, &owner, q)))
        .collect();
    assert!(alone.iter().all(|t| !t.trim().is_empty()), "{alone:?}");
    assert_eq!(
        sequences_with_role(&metrics, "deferred"),
        0.0,
        "alone, none waits"
    );

    assert!(!batcher.replies_waiting(), "every reply has started");
    let together: Vec<_> = QUESTIONS.iter().map(|q| ask(&batcher, &owner, q)).collect();
    // Four held at most (two rows): the fifth waits in the queue, and guesswork with it.
    assert!(batcher.replies_waiting());
    let together: Vec<String> = together.into_iter().map(text_of).collect();
    assert_eq!(together, alone);
    assert!(!batcher.replies_waiting());
    // Five replies and two rows: generating replies sat passes out.
    assert!(
        sequences_with_role(&metrics, "deferred") > 0.0,
        "no reply ever waited for a row"
    );
}
