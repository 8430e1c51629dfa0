//! Greedy decoding guided by a guess, as a state machine that any decoder can drive:
//! ONNX Runtime's (one sequence per call) or hearken's batched one (many sequences
//! per step). Each step the decoder is fed [`GuidedGreedy::feed`] and reports its own
//! greedy choice after every fed token; [`GuidedGreedy::advance`] keeps the longest
//! agreeing prefix of the guess, says how many cache positions to drop, and decides
//! what to feed next. The result is exactly the greedy transcript; a good guess only
//! makes it arrive in fewer steps.

use super::{END_TOKEN, START_TOKEN};

/// How far ahead in a guess a disagreeing token is looked for.
const REALIGN_WINDOW: usize = 4;

#[derive(Debug, Clone)]
pub struct GuidedGreedy {
    guess: Vec<i64>,
    /// Index in `guess` of the first guessed token not yet confirmed.
    cursor: usize,
    tokens: Vec<i64>,
    /// What the next step reads: the last confirmed token, then guessed ones.
    fed: Vec<i64>,
    max_tokens: usize,
    done: bool,
}

/// The decoder returned no choice for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoChoice;

impl GuidedGreedy {
    /// Decoding of at most `max_tokens` tokens, checking `guess` in the first step.
    pub fn new(guess: &[i64], max_tokens: usize) -> Self {
        let guess = guess[..guess.len().min(max_tokens.saturating_sub(1))].to_vec();
        let mut fed = Vec::with_capacity(1 + guess.len());
        fed.push(START_TOKEN);
        fed.extend_from_slice(&guess);
        GuidedGreedy {
            guess,
            cursor: 0,
            tokens: Vec::with_capacity(max_tokens),
            fed,
            max_tokens,
            done: max_tokens == 0,
        }
    }

    /// Token ids for the next step (empty once done).
    pub fn feed(&self) -> &[i64] {
        if self.done {
            &[]
        } else {
            &self.fed
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes the decoder's greedy choice after each fed token (`choices[i]` follows
    /// `feed()[..=i]`); returns how many of the positions just written to the
    /// decoder's self-attention cache must be dropped (guessed tokens past the first
    /// disagreement).
    pub fn advance(&mut self, choices: &[i64]) -> Result<usize, NoChoice> {
        let ids = std::mem::take(&mut self.fed);
        let agreed = ids[1..]
            .iter()
            .zip(choices)
            .take_while(|(guessed, chosen)| guessed == chosen)
            .count();
        let next = *choices.get(agreed).ok_or(NoChoice)?;
        self.tokens.extend_from_slice(&ids[1..1 + agreed]);
        self.cursor += agreed;
        let rejected = ids.len() - 1 - agreed;
        if next == END_TOKEN || self.tokens.len() >= self.max_tokens {
            self.done = true;
            return Ok(rejected);
        }
        self.tokens.push(next);
        self.fed.push(next);
        // Re-align after a disagreement: if the model's token appears a little
        // further on in the guess, propose what followed it there.
        let ahead = &self.guess[self.cursor.min(self.guess.len())..];
        if let Some(found) = ahead.iter().take(REALIGN_WINDOW).position(|&g| g == next) {
            self.cursor += found + 1;
            self.fed.extend_from_slice(&self.guess[self.cursor..]);
        }
        self.done = self.tokens.len() >= self.max_tokens;
        Ok(rejected)
    }

    /// The decoded tokens, at most `max_tokens`.
    pub fn into_tokens(mut self) -> Vec<i64> {
        self.tokens.truncate(self.max_tokens);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the machine with a "model" that always continues `truth` then ends.
    fn run(truth: &[i64], guess: &[i64], max: usize) -> (Vec<i64>, usize) {
        let mut g = GuidedGreedy::new(guess, max);
        let mut context: Vec<i64> = Vec::new();
        let mut steps = 0;
        while !g.is_done() {
            let fed = g.feed().to_vec();
            // The model's choice after each fed token, given what came before.
            let choices: Vec<i64> = (0..fed.len())
                .map(|i| {
                    let seen = context.len() + i; // tokens after START
                    let prefix_ok = context
                        .iter()
                        .chain(&fed[1..=i])
                        .zip(truth)
                        .all(|(a, b)| a == b);
                    if prefix_ok {
                        truth.get(seen).copied().unwrap_or(END_TOKEN)
                    } else {
                        99
                    }
                })
                .collect();
            let dropped = g.advance(&choices).unwrap();
            let kept = fed.len() - 1 - dropped;
            context.extend_from_slice(&fed[1..1 + kept]);
            if let Some(&last) = g.feed().first() {
                context.push(last);
            }
            steps += 1;
        }
        (g.into_tokens(), steps)
    }

    #[test]
    fn no_guess_is_plain_greedy() {
        let (tokens, steps) = run(&[5, 6, 7], &[], 10);
        assert_eq!(tokens, vec![5, 6, 7]);
        assert_eq!(steps, 4);
    }

    #[test]
    fn a_right_guess_takes_one_step() {
        let (tokens, steps) = run(&[5, 6, 7], &[5, 6, 7], 10);
        assert_eq!(tokens, vec![5, 6, 7]);
        assert_eq!(steps, 1);
    }

    #[test]
    fn a_wrong_guess_still_gives_the_greedy_result() {
        let (tokens, _) = run(&[5, 6, 7, 8], &[5, 9, 7, 8], 10);
        assert_eq!(tokens, vec![5, 6, 7, 8]);
    }

    #[test]
    fn the_cap_holds() {
        let (tokens, _) = run(&[5, 6, 7, 8], &[5, 6, 7, 8], 2);
        assert_eq!(tokens, vec![5, 6]);
        assert!(GuidedGreedy::new(&[], 0).is_done());
    }
}
