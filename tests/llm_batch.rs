//! Batched generation on the real SmolLM2 GGUF: sequences stepped together in one
//! forward pass reply exactly as each would alone, including when they join at
//! different times (one reading its prompt while others decode) and when one leaves
//! mid-batch.

mod llm_support;

use std::ops::ControlFlow;
use std::sync::{Mutex, MutexGuard, OnceLock};

use hearken::llm::{ChatMessage, EmbeddedModel, GenerationParams, Progress, Sequence};
use llm_support::{smollm_path, QUESTIONS};

fn model() -> MutexGuard<'static, EmbeddedModel> {
    hearken::llm::embedded::pin_candle_threads(1);
    static MODEL: OnceLock<Mutex<EmbeddedModel>> = OnceLock::new();
    let path = smollm_path();
    let model = MODEL.get_or_init(|| match EmbeddedModel::load(&path) {
        Ok(m) => Mutex::new(m),
        Err(e) => panic!("{e}"),
    });
    model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn prompt(question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a helpful voice assistant. Answer in one sentence."),
        ChatMessage::user(question),
    ]
}

fn params() -> GenerationParams {
    GenerationParams {
        max_tokens: 40,
        ..GenerationParams::default()
    }
}

/// Each question's reply, generated alone.
fn alone(model: &mut EmbeddedModel) -> Vec<String> {
    QUESTIONS
        .iter()
        .map(|q| {
            let mut text = String::new();
            model
                .generate(&prompt(q), &params(), &mut |piece| {
                    text.push_str(piece);
                    ControlFlow::Continue(())
                })
                .unwrap();
            text
        })
        .collect()
}

/// A reply being stepped in a batch, and its text so far.
struct Running {
    sequence: Sequence,
    text: String,
    finished: bool,
}

/// Steps every running sequence together until all are done; `join_at[i]` is the
/// pass at which question `i` joins, `leave` a (question, pass) that is dropped then.
fn batched(
    model: &mut EmbeddedModel,
    join_at: &[usize],
    leave: Option<(usize, usize)>,
) -> Vec<Option<String>> {
    let mut running: Vec<Option<Running>> = (0..QUESTIONS.len()).map(|_| None).collect();
    let mut results: Vec<Option<String>> = vec![None; QUESTIONS.len()];
    let mut joined = vec![false; QUESTIONS.len()];
    for pass in 0..10_000 {
        for (i, question) in QUESTIONS.iter().enumerate() {
            if !joined[i] && join_at[i] <= pass {
                joined[i] = true;
                let sequence = model
                    .begin_reply(None, &prompt(question), &params())
                    .unwrap();
                running[i] = Some(Running {
                    sequence,
                    text: String::new(),
                    finished: false,
                });
            }
        }
        if let Some((who, at)) = leave {
            if at == pass {
                running[who] = None; // cancelled: it simply leaves the batch
            }
        }
        let live: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].as_ref().is_some_and(|r| !r.sequence.is_done()))
            .collect();
        if live.is_empty() && joined.iter().all(|j| *j) {
            break;
        }
        let mut batch: Vec<&mut Sequence> = running
            .iter_mut()
            .flatten()
            .filter(|r| !r.sequence.is_done())
            .map(|r| &mut r.sequence)
            .collect();
        if batch.is_empty() {
            continue;
        }
        let progress = model.step(&mut batch, 32).unwrap();
        drop(batch);
        for (&i, step) in live.iter().zip(progress) {
            let run = running[i].as_mut().unwrap();
            match step {
                Progress::Piece(piece) => run.text.push_str(&piece),
                Progress::Finished { tail, .. } => {
                    run.text.push_str(&tail);
                    run.finished = true;
                    results[i] = Some(run.text.clone());
                }
                Progress::Reading | Progress::Done => {}
            }
        }
    }
    results
}

#[test]
fn a_batch_replies_exactly_as_each_sequence_alone() {
    let mut model = model();
    let expected = alone(&mut model);
    assert!(expected.iter().all(|t| !t.is_empty()), "{expected:?}");
    let together = batched(&mut model, &[0; 5], None);
    let together: Vec<String> = together.into_iter().map(Option::unwrap).collect();
    assert_eq!(together, expected);
}

#[test]
fn sequences_joining_mid_batch_and_leaving_change_no_other_reply() {
    let mut model = model();
    let expected = alone(&mut model);
    // Staggered: later questions read their prompts while earlier ones decode; the
    // third leaves after a few passes.
    let results = batched(&mut model, &[0, 1, 3, 6, 10], Some((2, 5)));
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            assert_eq!(result, &None, "the cancelled reply never finished");
        } else {
            assert_eq!(result.as_ref(), Some(&expected[i]), "question {i}");
        }
    }
}
