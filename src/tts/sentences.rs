//! Where text may be cut for speech. [`SentenceSplitter`] takes the LLM's
//! streamed deltas and hands back each sentence as soon as it is known to
//! have ended: a `.` `!` `?` (with any closing quotes or brackets) followed by
//! whitespace, or a newline. Once a sentence has run past
//! [`CLAUSE_MIN_CHARS`], a `,` `;` `:` followed by whitespace also ends a
//! piece, so the first audio of a long sentence leaves early. A period after
//! a common abbreviation ("Mr.", "e.g."), an initial ("J.") or a list number
//! ("1.") does not end a sentence, and "3.5" or "10:30" never split because no
//! whitespace follows the mark.
//!
//! The first words of a reply are what the listener waits for, so until
//! [`SentenceSplitter::with_first_piece_words`] words have been handed out, a piece
//! ends at any clause mark or once it reaches the words still missing. "Sure," alone
//! is too short to hide the synthesis of what follows, so the next piece is cut early
//! too; after that, pieces are whole sentences, synthesised while earlier ones play. [`clauses`] applies the same rules to one
//! finished sentence, for the Piper voice, which phonemises clause by clause.

/// A clause mark (`,;:`) ends a streamed piece only once the piece is longer
/// than this many characters (about 10 words, 3 s of speech): shorter pieces
/// would cost prosody for no gain in latency.
pub const CLAUSE_MIN_CHARS: usize = 60;

/// A piece with no boundary at all is cut at its last space once it is this
/// many characters long (about 15 s of speech), so one runaway sentence does
/// not hold back all audio.
pub const MAX_PENDING_CHARS: usize = 250;

/// Lower-case words that a period follows without ending the sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "eg", "ie", "cf",
    "approx", "inc", "ltd", "corp", "dept", "fig", "mt", "vol", "a.m", "p.m",
];

/// Splits streamed text into sentences as soon as each one ends.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    pending: String,
    /// Words still to hand out in early-cut pieces (see the module doc).
    early_words: usize,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the first piece at its first clause mark or after `words` whole words
    /// (0: like every other piece).
    pub fn with_first_piece_words(words: usize) -> Self {
        SentenceSplitter {
            early_words: words,
            ..Self::default()
        }
    }

    /// Appends `delta` and returns the sentences (or long clauses) it
    /// completed, trimmed, in order; usually none or one.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.pending.push_str(delta);
        let mut pieces: Vec<String> = Vec::new();
        while let Some(end) = self.next_boundary() {
            let piece: String = self.pending.drain(..end).collect();
            let words = piece.split_whitespace().count();
            self.early_words = self.early_words.saturating_sub(words);
            pieces.push(piece);
        }
        if self.pending.trim_start().chars().count() > MAX_PENDING_CHARS {
            if let Some(cut) = self.pending.trim_end().rfind(char::is_whitespace) {
                pieces.push(self.pending.drain(..cut).collect());
            }
        }
        pieces
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The whole words written so far (those followed by whitespace), as one piece,
    /// if there are at least `min_words`: for speech about to run dry while the rest
    /// of its sentence is still being written. The unfinished last word stays.
    pub fn take_words(&mut self, min_words: usize) -> Option<String> {
        let text = self.pending.as_str();
        let cut = if text.ends_with(char::is_whitespace) {
            text.len()
        } else {
            text.rfind(char::is_whitespace)?
        };
        let words = text[..cut].split_whitespace().count();
        if words == 0 || words < min_words {
            return None;
        }
        let piece: String = self.pending.drain(..cut).collect();
        self.early_words = self.early_words.saturating_sub(words);
        Some(piece.trim().to_string())
    }

    /// The unfinished tail at the end of the stream, if it holds any text.
    pub fn finish(&mut self) -> Option<String> {
        let tail = std::mem::take(&mut self.pending);
        let tail = tail.trim();
        (!tail.is_empty()).then(|| tail.to_string())
    }

    /// Byte offset just past the first confirmed boundary in `pending`.
    fn next_boundary(&self) -> Option<usize> {
        let text = self.pending.as_str();
        let first = self.early_words > 0;
        // Characters of the piece so far, not counting leading whitespace.
        let mut length = 0;
        let mut words = 0;
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if c == '\n' {
                return Some(i + 1);
            }
            if length > 0 || !c.is_whitespace() {
                length += 1;
            }
            if c.is_whitespace() {
                if in_word {
                    words += 1;
                }
                in_word = false;
                // A word is whole once whitespace follows it.
                if first && words >= self.early_words {
                    return Some(i);
                }
            } else {
                in_word = true;
            }
            let long = first || length > CLAUSE_MIN_CHARS;
            if is_sentence_mark(c) || (long && is_clause_mark(c)) {
                match scan(text, i, false) {
                    Scan::Boundary(end) => return Some(end),
                    Scan::NeedMore => return None,
                    Scan::No => {}
                }
            }
        }
        None
    }
}

/// One clause of a finished sentence: its text without the closing marks,
/// and the mark that ended it (`None` for a tail without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause<'a> {
    pub text: &'a str,
    pub mark: Option<char>,
}

/// Cuts finished text at every `.,;:!?` that ends a clause by the rules of
/// this module (end of text counts as whitespace). Empty clauses are dropped.
pub fn clauses(text: &str) -> Vec<Clause<'_>> {
    let mut out = Vec::new();
    let mut push = |from: usize, to: usize, mark| {
        let body = text[from..to].trim();
        if !body.is_empty() {
            out.push(Clause { text: body, mark });
        }
    };
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if i >= start && (is_sentence_mark(c) || is_clause_mark(c)) {
            if let Scan::Boundary(end) = scan(text, i, true) {
                push(start, i, Some(c));
                start = end;
            }
        }
    }
    push(start, text.len(), None);
    out
}

/// Whether the mark at `i` ends a piece.
enum Scan {
    /// Yes; the piece ends at this byte offset (after closing marks).
    Boundary(usize),
    /// The text ends before we can tell.
    NeedMore,
    No,
}

/// Looks at the run of marks and closers that starts at `i` and what
/// follows it. With `at_end`, the end of text counts as whitespace.
fn scan(text: &str, i: usize, at_end: bool) -> Scan {
    let run = text[i..]
        .char_indices()
        .take_while(|&(_, d)| is_sentence_mark(d) || is_clause_mark(d) || is_closer(d))
        .last()
        .map_or(i, |(j, d)| i + j + d.len_utf8());
    match text[run..].chars().next() {
        None if at_end => Scan::Boundary(run),
        None => Scan::NeedMore,
        Some(next) if next.is_whitespace() => {
            let single_period = text[i..run].starts_with('.') && !text[i..run].starts_with("..");
            if single_period && !ends_sentence(&text[..i]) {
                Scan::No
            } else {
                Scan::Boundary(run)
            }
        }
        Some(_) => Scan::No,
    }
}

/// Whether a period right after `before` ends a sentence: not after an
/// abbreviation, a single-letter initial (other than "I"), or a list number
/// that opens the text.
fn ends_sentence(before: &str) -> bool {
    let word = before
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default()
        .trim_start_matches(|c: char| !c.is_alphanumeric());
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return false;
    }
    let mut letters = word.chars();
    if let (Some(first), None) = (letters.next(), letters.next()) {
        if first.is_uppercase() && first != 'I' {
            return false;
        }
    }
    let list_number = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit());
    !(list_number && before.trim() == word)
}

fn is_sentence_mark(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

fn is_clause_mark(c: char) -> bool {
    matches!(c, ',' | ';' | ':')
}

/// Characters that may follow a sentence mark and still belong to the
/// sentence: closing quotes and brackets, and markdown emphasis.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»' | '*' | '_'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_words_hands_out_whole_words_and_keeps_the_unfinished_one() {
        let mut splitter = SentenceSplitter::new();
        assert!(splitter.push("Paris is the capital of Fra").is_empty());
        assert_eq!(
            splitter.take_words(2).as_deref(),
            Some("Paris is the capital of")
        );
        assert_eq!(
            splitter.take_words(1),
            None,
            "\"Fra\" is not a whole word yet"
        );
        assert_eq!(splitter.push("nce. "), ["France."]);
        assert!(splitter.push("It is ").is_empty());
        assert_eq!(splitter.take_words(3), None, "fewer words than asked for");
        assert_eq!(splitter.take_words(2).as_deref(), Some("It is"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn the_first_piece_ends_at_a_comma_or_after_a_few_words() {
        let mut splitter = SentenceSplitter::with_first_piece_words(4);
        let pieces = splitter.push("Sure, the capital of France is Paris. ");
        assert_eq!(pieces, ["Sure,", "the capital of", "France is Paris."]);
        let mut splitter = SentenceSplitter::with_first_piece_words(4);
        let mut pieces = Vec::new();
        for word in
            "The capital of France is Paris, a city of light. It is big.".split_inclusive(' ')
        {
            pieces.extend(splitter.push(word));
        }
        pieces.extend(splitter.finish());
        assert_eq!(
            pieces,
            [
                "The capital of France",
                "is Paris, a city of light.",
                "It is big."
            ],
            "only the first piece is cut early"
        );
        let mut splitter = SentenceSplitter::with_first_piece_words(4);
        assert!(
            splitter.push("The capital of Fra").is_empty(),
            "a word is whole only once whitespace follows"
        );
    }

    /// Feeds `text` in `step`-character deltas; returns every piece, tail last.
    fn split(text: &str, step: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut splitter = SentenceSplitter::new();
        let mut out = Vec::new();
        for chunk in chars.chunks(step) {
            out.extend(splitter.push(&chunk.iter().collect::<String>()));
        }
        out.extend(splitter.finish());
        out
    }

    fn check(text: &str, want: &[&str]) {
        for step in [1, 3, 7, text.len()] {
            assert_eq!(split(text, step), want, "step {step}");
        }
    }

    #[test]
    fn sentence_leaves_when_whitespace_follows() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("Hello there.").is_empty());
        assert_eq!(s.push(" How"), ["Hello there."]);
        assert_eq!(s.push(" are you?\nI"), ["How are you?"]);
        assert_eq!(s.finish().as_deref(), Some("I"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn marks_newlines_and_closers() {
        check(
            "Wow! Really?! He said \"stop.\" **Done.** Title\n\nBody",
            &[
                "Wow!",
                "Really?!",
                "He said \"stop.\"",
                "**Done.**",
                "Title",
                "Body",
            ],
        );
    }

    #[test]
    fn decimals_times_and_abbreviations_do_not_split() {
        check(
            "Mr. Smith paid 3.5 dollars at 10:30 a.m. today, e.g. for J. R. Tolkien books. Ok.",
            &[
                "Mr. Smith paid 3.5 dollars at 10:30 a.m. today, e.g. for J. R. Tolkien books.",
                "Ok.",
            ],
        );
        check("So am I. Fine... Sure.", &["So am I.", "Fine...", "Sure."]);
        check(
            "1. Preheat the oven. 2. Bake.",
            &["1. Preheat the oven.", "2. Bake."],
        );
    }

    #[test]
    fn long_sentences_also_split_at_clauses() {
        check("Yes, a short one; fine.", &["Yes, a short one; fine."]);
        let long =
            "The weather tomorrow will be mostly sunny over the whole region in the morning, \
                    with clouds later; expect rain by evening.";
        check(
            long,
            &[
                "The weather tomorrow will be mostly sunny over the whole region in the morning,",
                "with clouds later; expect rain by evening.",
            ],
        );
    }

    #[test]
    fn runaway_text_is_cut_at_spaces() {
        let text = "word ".repeat(120);
        let pieces = split(&text, 5);
        assert!(pieces.len() >= 2, "{pieces:?}");
        assert!(pieces
            .iter()
            .all(|p| p.chars().count() <= MAX_PENDING_CHARS));
        assert_eq!(pieces.join(" "), text.trim());
    }

    #[test]
    fn clauses_carry_their_marks() {
        let got = clauses("Hello, world: Mr. Smith paid 3.5 dollars! Why? ok");
        let want = [
            ("Hello", Some(',')),
            ("world", Some(':')),
            ("Mr. Smith paid 3.5 dollars", Some('!')),
            ("Why", Some('?')),
            ("ok", None),
        ];
        let got: Vec<_> = got.iter().map(|c| (c.text, c.mark)).collect();
        assert_eq!(got, want);
        assert!(clauses(" ... ").is_empty());
    }
}
