//! Prompt sets: the formats researchers have, the built-in sets, and seeded sampling.
//!
//! Files arrive as bytes (the core does no I/O): JSON lists of `{"instruction": ...}` (the
//! refusal-direction study's splits), AdvBench CSV (`goal` column), or plain text with one
//! prompt per line.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// One instruction, with the category its set gives it, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl Prompt {
    pub fn new(instruction: impl Into<String>) -> Self {
        Prompt {
            instruction: instruction.into(),
            category: None,
        }
    }
}

/// How a prompt file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// A JSON array of `{"instruction": ..., "category": ...}` objects (or of plain strings).
    InstructionJson,
    /// A CSV file with a header row and a `goal` column (AdvBench).
    AdvBenchCsv,
    /// UTF-8 text, one prompt per non-empty line.
    Lines,
}

impl PromptFormat {
    /// Guesses the format from a file name: `.json`, `.csv`, anything else is text.
    pub fn from_file_name(name: &str) -> PromptFormat {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            PromptFormat::InstructionJson
        } else if lower.ends_with(".csv") {
            PromptFormat::AdvBenchCsv
        } else {
            PromptFormat::Lines
        }
    }
}

/// Why a prompt file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{file}: not a JSON list of {{\"instruction\": ...}} objects or strings: {source}")]
    Json {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file}: invalid CSV: {source}")]
    Csv { file: String, source: csv::Error },
    #[error("{file}: no `goal` column (AdvBench CSV); the header has {columns:?}")]
    NoGoalColumn { file: String, columns: Vec<String> },
    #[error("{file}: not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("{file}: prompt {index} is empty")]
    Empty { file: String, index: usize },
    #[error("{file}: no prompts")]
    NoPrompts { file: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonEntry {
    Object(Prompt),
    Text(String),
}

/// Parses a prompt file. `file` names it in errors.
///
/// # Errors
///
/// A [`PromptError`] naming the file and what is wrong with it; an empty file or an empty
/// prompt is an error, not a silently smaller set.
pub fn parse(file: &str, bytes: &[u8], format: PromptFormat) -> Result<Vec<Prompt>, PromptError> {
    let prompts: Vec<Prompt> = match format {
        PromptFormat::InstructionJson => {
            let entries: Vec<JsonEntry> =
                serde_json::from_slice(bytes).map_err(|source| PromptError::Json {
                    file: file.to_owned(),
                    source,
                })?;
            entries
                .into_iter()
                .map(|e| match e {
                    JsonEntry::Object(p) => p,
                    JsonEntry::Text(t) => Prompt::new(t),
                })
                .collect()
        }
        PromptFormat::AdvBenchCsv => parse_csv(file, bytes)?,
        PromptFormat::Lines => std::str::from_utf8(bytes)
            .map_err(|_| PromptError::NotUtf8 {
                file: file.to_owned(),
            })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(Prompt::new)
            .collect(),
    };
    if prompts.is_empty() {
        return Err(PromptError::NoPrompts {
            file: file.to_owned(),
        });
    }
    if let Some(index) = prompts.iter().position(|p| p.instruction.trim().is_empty()) {
        return Err(PromptError::Empty {
            file: file.to_owned(),
            index,
        });
    }
    Ok(prompts)
}

fn parse_csv(file: &str, bytes: &[u8]) -> Result<Vec<Prompt>, PromptError> {
    let csv_err = |source| PromptError::Csv {
        file: file.to_owned(),
        source,
    };
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers().map_err(csv_err)?.clone();
    let Some(goal) = headers.iter().position(|h| h.trim() == "goal") else {
        return Err(PromptError::NoGoalColumn {
            file: file.to_owned(),
            columns: headers.iter().map(str::to_owned).collect(),
        });
    };
    reader
        .records()
        .map(|record| {
            let record = record.map_err(csv_err)?;
            Ok(Prompt::new(record.get(goal).unwrap_or_default().trim()))
        })
        .collect()
}

const BUILTIN_HARMFUL: &str = include_str!("../../prompts/harmful.json");
const BUILTIN_HARMLESS: &str = include_str!("../../prompts/harmless.json");

fn builtin(name: &str, json: &str) -> Vec<Prompt> {
    // The sets are compiled in and checked by the tests below, so this cannot fail at run time.
    parse(name, json.as_bytes(), PromptFormat::InstructionJson)
        .unwrap_or_else(|e| unreachable!("built-in prompt set: {e}"))
}

/// Our own harmful requests (80, eight labelled categories), for use with no files.
pub fn builtin_harmful() -> Vec<Prompt> {
    builtin("built-in harmful set", BUILTIN_HARMFUL)
}

/// Our own everyday requests (80, eight labelled categories), for use with no files.
pub fn builtin_harmless() -> Vec<Prompt> {
    builtin("built-in harmless set", BUILTIN_HARMLESS)
}

/// A seeded random order of `prompts` (the same seed gives the same order everywhere).
pub fn shuffled(mut prompts: Vec<Prompt>, seed: u64) -> Vec<Prompt> {
    prompts.shuffle(&mut StdRng::seed_from_u64(seed));
    prompts
}

/// Where a prompt set came from and how much of it was used (for reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptUse {
    pub train_source: String,
    pub val_source: String,
    pub n_train: usize,
    pub n_val: usize,
}

/// Where every set of a study came from (for reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptUses {
    pub harmful: PromptUse,
    pub harmless: PromptUse,
    pub eval_harmful: String,
    pub eval_harmless: String,
    pub n_eval_harmful: usize,
    pub n_eval_harmless: usize,
}

/// One of the built-in sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinSet {
    Harmful,
    Harmless,
}

impl BuiltinSet {
    pub fn name(self) -> &'static str {
        match self {
            BuiltinSet::Harmful => "harmful",
            BuiltinSet::Harmless => "harmless",
        }
    }

    pub fn prompts(self) -> Vec<Prompt> {
        match self {
            BuiltinSet::Harmful => builtin_harmful(),
            BuiltinSet::Harmless => builtin_harmless(),
        }
    }
}

/// Every prompt set of a study (compare, repair): training and validation prompts of each
/// kind, the evaluation sets, and where they came from.
#[derive(Debug, Clone)]
pub struct StudyPrompts {
    pub harmful: Vec<Prompt>,
    pub harmless: Vec<Prompt>,
    pub val_harmful: Vec<Prompt>,
    pub val_harmless: Vec<Prompt>,
    pub eval_harmful: Vec<Prompt>,
    pub eval_harmless: Vec<Prompt>,
    pub uses: PromptUses,
}

/// Training and validation prompts held out from one set: the set in the seeded order of
/// [`shuffled`], its first `n_val` prompts for validation and the next `n_train` for training
/// (either may come out shorter when the set is small).
pub fn hold_out(
    prompts: Vec<Prompt>,
    n_train: usize,
    n_val: usize,
    seed: u64,
) -> (Vec<Prompt>, Vec<Prompt>) {
    let mut it = shuffled(prompts, seed).into_iter();
    let val: Vec<Prompt> = it.by_ref().take(n_val).collect();
    (it.take(n_train).collect(), val)
}

/// `prompts` without the instructions that appear in `exclude` (compared after trimming), e.g.
/// AdvBench minus the training split (METHOD §7).
pub fn without(prompts: Vec<Prompt>, exclude: &[Prompt]) -> Vec<Prompt> {
    let excluded: std::collections::HashSet<&str> =
        exclude.iter().map(|p| p.instruction.trim()).collect();
    prompts
        .into_iter()
        .filter(|p| !excluded.contains(p.instruction.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_out_splits_a_seeded_order_without_overlap() {
        let all: Vec<Prompt> = (0..10).map(|i| Prompt::new(format!("p{i}"))).collect();
        let (train, val) = hold_out(all.clone(), 6, 3, 5);
        assert_eq!((train.len(), val.len()), (6, 3));
        assert!(train.iter().all(|t| !val.contains(t)));
        let order = shuffled(all.clone(), 5);
        assert_eq!(val, order[..3]);
        assert_eq!(train, order[3..9]);
        let (train, val) = hold_out(all, 20, 4, 5);
        assert_eq!((train.len(), val.len()), (6, 4));
    }

    #[test]
    fn the_three_file_formats_parse() {
        let json = br#"[{"instruction": "Say hi", "category": "greeting"}, {"instruction": "Count"}, "Plain"]"#;
        let got = parse("a.json", json, PromptFormat::InstructionJson).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].category.as_deref(), Some("greeting"));
        assert_eq!(got[2].instruction, "Plain");

        let csv = b"goal,target\n\"Write a poem, please\",Sure\nCount to three,Sure\n";
        let got = parse("a.csv", csv, PromptFormat::AdvBenchCsv).unwrap();
        assert_eq!(
            got.iter()
                .map(|p| p.instruction.as_str())
                .collect::<Vec<_>>(),
            ["Write a poem, please", "Count to three"]
        );

        let text = b"first\r\n\n  second  \n";
        let got = parse("a.txt", text, PromptFormat::Lines).unwrap();
        assert_eq!(got, [Prompt::new("first"), Prompt::new("second")]);
    }

    #[test]
    fn bad_files_are_named_errors() {
        assert!(matches!(
            parse("x.json", b"{\"a\": 1}", PromptFormat::InstructionJson),
            Err(PromptError::Json { file, .. }) if file == "x.json"
        ));
        assert!(matches!(
            parse("x.csv", b"prompt,target\na,b\n", PromptFormat::AdvBenchCsv),
            Err(PromptError::NoGoalColumn { columns, .. }) if columns == ["prompt", "target"]
        ));
        assert!(matches!(
            parse("x.txt", b"\n\n", PromptFormat::Lines),
            Err(PromptError::NoPrompts { .. })
        ));
        assert!(matches!(
            parse("x.txt", &[0xff, 0xfe], PromptFormat::Lines),
            Err(PromptError::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse(
                "x.json",
                br#"[{"instruction": " "}]"#,
                PromptFormat::InstructionJson
            ),
            Err(PromptError::Empty { index: 0, .. })
        ));
        assert_eq!(
            PromptFormat::from_file_name("Data/AdvBench.CSV"),
            PromptFormat::AdvBenchCsv
        );
    }

    #[test]
    fn builtin_sets_have_at_least_64_labelled_distinct_prompts() {
        for set in [builtin_harmful(), builtin_harmless()] {
            assert!(set.len() >= 64);
            assert!(set.iter().all(|p| p.category.is_some()));
            let distinct: std::collections::HashSet<_> =
                set.iter().map(|p| &p.instruction).collect();
            assert_eq!(distinct.len(), set.len());
        }
    }

    #[test]
    fn shuffling_is_seeded_and_without_removes_exact_instructions() {
        let set: Vec<Prompt> = (0..20).map(|i| Prompt::new(format!("p{i}"))).collect();
        assert_eq!(shuffled(set.clone(), 3), shuffled(set.clone(), 3));
        assert_ne!(shuffled(set.clone(), 3), set);
        let kept = without(set, &[Prompt::new(" p1 "), Prompt::new("p7")]);
        assert_eq!(kept.len(), 18);
        assert!(
            !kept
                .iter()
                .any(|p| p.instruction == "p1" || p.instruction == "p7")
        );
    }
}
