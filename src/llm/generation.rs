//! What `EmbeddedModel::generate` is asked for and what it reports: sampling
//! parameters in, the outcome of one reply out (token counts, why it ended, latency).

use candle_transformers::generation::Sampling;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens in the reply (the end-of-turn token not counted).
    pub max_tokens: usize,
    /// 0 (or less) is greedy decoding; otherwise softmax temperature.
    pub temperature: f64,
    /// With a temperature, sample only among the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampler; the same seed and prompt give the same reply.
    pub seed: u64,
    /// Divides the logits of tokens already in the reply; 1.0 turns it off.
    pub repeat_penalty: f32,
    /// How many of the last reply tokens the penalty looks at.
    pub repeat_last_n: usize,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.0,
            top_k: None,
            seed: 0x5eed,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
        }
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model closed its turn (`<|im_end|>` or end of sequence).
    Stop,
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The callback returned `Break`.
    Cancelled,
}

/// What one `generate` call did.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutcome {
    /// Tokens generated (the end-of-turn token not counted).
    pub tokens: usize,
    /// The callback stopped the reply.
    pub cancelled: bool,
    pub finish_reason: FinishReason,
    /// Length of the encoded ChatML prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens a kept state had already read (see `prefix_cache`).
    pub cached_tokens: usize,
    /// From the call to the first text piece; `None` if there was none.
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
}

/// The candle sampler for `params`: greedy when the temperature is not positive.
pub(super) fn sampling(params: &GenerationParams) -> Sampling {
    let temperature = params.temperature;
    match params.top_k {
        _ if temperature <= 0.0 => Sampling::ArgMax,
        Some(k) => Sampling::TopK { k, temperature },
        None => Sampling::All { temperature },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_greedy() {
        let params = GenerationParams {
            top_k: Some(40),
            ..GenerationParams::default()
        };
        assert!(matches!(sampling(&params), Sampling::ArgMax));
        let params = GenerationParams {
            temperature: 0.7,
            ..params
        };
        assert!(matches!(sampling(&params), Sampling::TopK { k: 40, .. }));
    }
}
