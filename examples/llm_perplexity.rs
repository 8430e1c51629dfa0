//! How much the embedded LLM's int8 paths cost in accuracy: reads a text token by
//! token through SmolLM2 three ways and prints each one's mean negative log-likelihood
//! of the next token (lower is better), and how often its likeliest next token agrees
//! with the closest int8 path (one scale per 32 values).
//!
//! ```text
//! cargo run --release --example llm_perplexity -- FILE [--tokens 600] [--model GGUF]
//! ```
//!
//! The three: hearken's kernel with one scale per block of 32 (`Scaling::PerBlock`)
//! and per span of up to 256 (`Scaling::Wide`, the default), and candle's own
//! `quantized_llama` on the GGUF as it ships (its matmuls quantize inputs per 32).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;
use hearken::kernels::Scaling;
use hearken::llm::llama::{BatchItem, Llama};

#[derive(Parser)]
struct Args {
    /// A plain-text file to read.
    text: PathBuf,
    /// Tokens of it to read.
    #[arg(long, default_value_t = 600)]
    tokens: usize,
    /// The GGUF model.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
}

/// What one path made of the text.
struct Reading {
    mean_nll: f64,
    likeliest: Vec<usize>,
}

fn read_with(tokens: &[u32], mut next_logits: impl FnMut(usize, u32) -> Vec<f32>) -> Reading {
    let mut nll = 0f64;
    let mut likeliest = Vec::with_capacity(tokens.len());
    for (position, pair) in tokens.windows(2).enumerate() {
        let logits = next_logits(position, pair[0]);
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let sum: f64 = logits.iter().map(|v| f64::from(v - max).exp()).sum();
        nll += f64::from(max) + sum.ln() - f64::from(logits[pair[1] as usize]);
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        likeliest.push(best);
    }
    Reading {
        mean_nll: nll / (tokens.len() - 1) as f64,
        likeliest,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.text).context("reading the text")?;
    let open = || -> anyhow::Result<(gguf_file::Content, BufReader<File>)> {
        let mut reader = BufReader::new(File::open(&args.model).context("opening the model")?);
        let content = gguf_file::Content::read(&mut reader)?;
        Ok((content, reader))
    };
    let (content, mut reader) = open()?;
    let tokenizer = hearken::llm::gguf::tokenizer(&content)?;
    let mut tokens = tokenizer.encode(&text);
    tokens.truncate(args.tokens);
    anyhow::ensure!(tokens.len() >= 2, "the text is shorter than two tokens");
    let mut fast = hearken::llm::gguf::requantize_for_cpu(&content, &mut reader)?;

    let mut readings = Vec::new();
    for (name, scaling) in [
        ("int8, one scale per 32", Scaling::PerBlock),
        ("int8, one scale per 256 (default)", Scaling::Wide),
    ] {
        let model =
            Llama::from_gguf_scaled(&fast.content, &mut fast.reader, &Device::Cpu, scaling)?;
        let mut state = model.empty_state();
        let reading = read_with(&tokens, |_, token| {
            let mut items = [BatchItem {
                tokens: &[token],
                state: &mut state,
            }];
            let logits = model.forward(&mut items).expect("a forward pass");
            logits
                .flatten_all()
                .and_then(|l| l.to_vec1())
                .expect("logits")
        });
        readings.push((name, reading));
    }
    let (content, mut reader) = open()?;
    let mut candle = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)?;
    let reading = read_with(&tokens, |position, token| {
        let input = Tensor::new(&[token], &Device::Cpu).and_then(|t| t.unsqueeze(0));
        let logits = input.and_then(|input| candle.forward(&input, position));
        logits
            .and_then(|l| l.flatten_all()?.to_vec1())
            .expect("logits")
    });
    readings.push(("candle quantized_llama (GGUF as shipped)", reading));

    println!("{} tokens of {}", tokens.len(), args.text.display());
    let closest = readings[0].1.likeliest.clone();
    for (name, reading) in &readings {
        let agree = reading
            .likeliest
            .iter()
            .zip(&closest)
            .filter(|(a, b)| a == b)
            .count() as f64
            / closest.len() as f64;
        println!(
            "{name:42} mean NLL {:.4}  perplexity {:7.3}  likeliest token as per-32: {:5.1} %",
            reading.mean_nll,
            reading.mean_nll.exp(),
            agree * 100.0
        );
    }
    Ok(())
}
