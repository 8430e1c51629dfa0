//! Speaks a sentence with hearken's own Piper voice into a 16 kHz mono PCM16 WAV,
//! the format the VAD, STT and turn models hear, so test speech can be made with the
//! synthesis the server itself uses (espeak-ng's own voice is too flat for prosody
//! models such as Smart Turn).
//!
//! ```text
//! cargo run --release --example say -- --text "What is the capital of France?" \
//!     --out capital.wav [--leading-ms 100] [--trailing-ms 200] [--models models]
//! ```
//!
//! Piper's 22,050 Hz output is resampled with rubato, its quiet edges are replaced by
//! exact silence of the given lengths, and samples are clipped to 16 bits. Piper adds
//! noise to prosody and durations, so each run sounds slightly different.

#[path = "support/speech.rs"]
mod speech;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Speak a sentence with hearken's Piper voice into a 16 kHz WAV")]
struct Args {
    /// The text to speak.
    #[arg(long)]
    text: String,
    /// WAV file to write (16 kHz, mono, 16-bit).
    #[arg(long)]
    out: PathBuf,
    /// Silence before the speech, in ms.
    #[arg(long, default_value_t = 100)]
    leading_ms: u32,
    /// Silence after the speech, in ms (a short pause, as when a speaker stops).
    #[arg(long, default_value_t = 200)]
    trailing_ms: u32,
    /// Models directory (`scripts/fetch-models.sh`).
    #[arg(long, default_value = "models")]
    models: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut speaker = speech::Speaker::load(&args.models)?;
    let samples = speech::with_silence(
        &speaker.speak_16k(&args.text)?,
        args.leading_ms,
        args.trailing_ms,
    );
    speech::write_wav(&args.out, &samples)?;
    println!(
        "{}: {:.2} s, {:?}",
        args.out.display(),
        samples.len() as f64 / f64::from(speech::OUT_RATE),
        args.text
    );
    Ok(())
}
