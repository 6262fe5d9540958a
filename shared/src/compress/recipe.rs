//! Compression methods and their one-line recipes (`rtn:4:128`, `gguf:q4_0`, `wanda:2:4`), the
//! form the CLI's `--compressed` and the server's jobs accept.

use std::fmt;
use std::str::FromStr;

use crate::gguf::GgmlType;

use super::CompressError;
use super::grid::QuantGrid;
use super::prune::Sparsity;

/// One compression method with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Round-to-nearest on a uniform grid.
    Rtn(QuantGrid),
    /// A GGUF block format, bit-exact with llama.cpp's reference quantizers.
    Ggml(GgmlType),
    /// GPTQ: quantization with second-order error feedback.
    Gptq(QuantGrid),
    /// Zero the smallest `|W|`.
    Magnitude(Sparsity),
    /// Zero the smallest `|W| * ||X_j||`.
    Wanda(Sparsity),
    /// Prune by `w^2 / U_cc^2` with second-order error feedback.
    SparseGpt(Sparsity),
}

/// The method names recipes start with.
pub const METHOD_NAMES: [&str; 6] = ["rtn", "gguf", "gptq", "magnitude", "wanda", "sparsegpt"];

/// Whether `spec` starts like a recipe (`wanda:…`): when it does not parse, its parse error
/// says more than "no such model".
pub fn looks_like_recipe(spec: &str) -> bool {
    spec.split_once(':')
        .is_some_and(|(m, _)| METHOD_NAMES.contains(&m.to_ascii_lowercase().as_str()))
}

/// The GGUF block formats `compress` writes.
pub const GGML_TYPES: [GgmlType; 7] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

impl Method {
    /// Whether the method reads calibration activations to decide anything (the others are
    /// still measured on them).
    pub fn needs_calibration(&self) -> bool {
        matches!(
            self,
            Method::Gptq(_) | Method::Wanda(_) | Method::SparseGpt(_)
        )
    }

    /// Whether the method only sets weights to zero, leaving every other one as it was.
    pub fn only_zeroes(&self) -> bool {
        matches!(self, Method::Magnitude(_) | Method::Wanda(_))
    }

    /// The method's family name, as recipes spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rtn(_) => "rtn",
            Method::Ggml(_) => "gguf",
            Method::Gptq(_) => "gptq",
            Method::Magnitude(_) => "magnitude",
            Method::Wanda(_) => "wanda",
            Method::SparseGpt(_) => "sparsegpt",
        }
    }

    /// Whether the method prunes (as opposed to quantizing).
    pub fn prunes(&self) -> bool {
        matches!(
            self,
            Method::Magnitude(_) | Method::Wanda(_) | Method::SparseGpt(_)
        )
    }
}

/// The lower-case name recipes use for a GGUF block format (`q4_k` for ggml's Q4_K).
pub fn ggml_type_name(ty: GgmlType) -> String {
    ty.name().to_ascii_lowercase()
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Rtn(g) | Method::Gptq(g) => write!(f, "{}:{g}", self.name()),
            Method::Ggml(ty) => write!(f, "gguf:{}", ggml_type_name(*ty)),
            Method::Magnitude(s) | Method::Wanda(s) | Method::SparseGpt(s) => {
                write!(f, "{}:{s}", self.name())
            }
        }
    }
}

impl FromStr for Method {
    type Err = CompressError;

    /// `rtn|gptq:BITS[:GROUP][:sym|:asym]` (group 128 by default, 0 for one group per row,
    /// symmetric by default), `gguf:TYPE`, `magnitude|wanda|sparsegpt:FRACTION` or `:N:M`.
    fn from_str(recipe: &str) -> Result<Method, CompressError> {
        let bad = |reason: String| CompressError::BadRecipe {
            recipe: recipe.to_owned(),
            reason,
        };
        let (name, rest) = recipe.split_once(':').ok_or_else(|| {
            bad(
                "expected METHOD:PARAMETERS, e.g. rtn:4:128, gguf:q4_0, wanda:0.5, wanda:2:4"
                    .into(),
            )
        })?;
        let parts: Vec<&str> = rest.split(':').collect();
        match name.to_ascii_lowercase().as_str() {
            "rtn" | "gptq" => {
                let grid = parse_grid(&parts).map_err(bad)?;
                Ok(if name.eq_ignore_ascii_case("rtn") {
                    Method::Rtn(grid)
                } else {
                    Method::Gptq(grid)
                })
            }
            "gguf" => {
                let [ty] = parts[..] else {
                    return Err(bad("expected gguf:TYPE".into()));
                };
                GGML_TYPES
                    .into_iter()
                    .find(|t| ggml_type_name(*t).eq_ignore_ascii_case(ty))
                    .map(Method::Ggml)
                    .ok_or_else(|| bad(format!("unknown GGUF type `{ty}`; {}", type_list())))
            }
            "magnitude" | "wanda" | "sparsegpt" => {
                let sparsity = Sparsity::parse(&parts).map_err(bad)?;
                Ok(match name.to_ascii_lowercase().as_str() {
                    "magnitude" => Method::Magnitude(sparsity),
                    "wanda" => Method::Wanda(sparsity),
                    _ => Method::SparseGpt(sparsity),
                })
            }
            other => Err(bad(format!(
                "unknown method `{other}`; one of {}",
                METHOD_NAMES.join(", ")
            ))),
        }
    }
}

fn type_list() -> String {
    let names: Vec<String> = GGML_TYPES.into_iter().map(ggml_type_name).collect();
    format!("one of {}", names.join(", "))
}

fn parse_grid(parts: &[&str]) -> Result<QuantGrid, String> {
    let (symmetric, numbers) = match parts.last().map(|s| s.to_ascii_lowercase()) {
        Some(s) if s == "sym" => (true, &parts[..parts.len() - 1]),
        Some(s) if s == "asym" => (false, &parts[..parts.len() - 1]),
        _ => (true, parts),
    };
    let number = |s: &str, what: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("{what} `{s}` is not a whole number"))
    };
    let (bits, group) = match numbers {
        [bits] => (number(bits, "bits")?, 128),
        [bits, group] => (number(bits, "bits")?, number(group, "group size")?),
        _ => return Err("expected BITS[:GROUP][:sym|:asym]".into()),
    };
    QuantGrid::new(bits, group, symmetric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_through_their_canonical_form() {
        for (text, canonical) in [
            ("rtn:4:128", "rtn:4:128:sym"),
            ("rtn:8", "rtn:8:128:sym"),
            ("RTN:3:0:asym", "rtn:3:0:asym"),
            ("gptq:4:32", "gptq:4:32:sym"),
            ("gguf:q4_0", "gguf:q4_0"),
            ("gguf:Q6_K", "gguf:q6_k"),
            ("magnitude:0.5", "magnitude:0.5"),
            ("wanda:2:4", "wanda:2:4"),
            ("sparsegpt:4:8", "sparsegpt:4:8"),
        ] {
            let m: Method = text.parse().unwrap();
            assert_eq!(m.to_string(), canonical);
            assert_eq!(canonical.parse::<Method>().unwrap(), m);
        }
    }

    #[test]
    fn recipes_are_told_from_model_names_by_their_method() {
        for spec in ["wanda:0.7:x", "RTN:4", "gguf:q9_9"] {
            assert!(looks_like_recipe(spec), "{spec}");
        }
        for spec in [
            "Qwen/Qwen2.5-0.5B-Instruct",
            "runs/model.gguf",
            "c:/models/x",
            "wanda",
        ] {
            assert!(!looks_like_recipe(spec), "{spec}");
        }
    }

    #[test]
    fn bad_recipes_say_what_is_wrong() {
        for (text, needle) in [
            ("rtn", "expected METHOD:PARAMETERS"),
            ("rtn:9:128", "bits"),
            ("rtn:4:x", "group size"),
            ("gguf:q3_k", "unknown GGUF type"),
            ("wanda:1.5", "fraction"),
            ("wanda:4:2", "N:M"),
            ("prune:0.5", "unknown method"),
        ] {
            let err = text.parse::<Method>().unwrap_err();
            assert!(
                matches!(&err, CompressError::BadRecipe { recipe, .. } if recipe == text),
                "{err}"
            );
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
