//! Broken real model files give clear errors naming the file and the part that is wrong.

use refusal_core::gguf::GgufError;
use refusal_core::load::{self, LoadError};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::builtin_gguf;

fn load_bytes(bytes: &[u8]) -> Result<(), LoadError> {
    let file = load::gguf::parse("cut.gguf", bytes)?;
    load::gguf_model(
        "cut.gguf",
        &file,
        bytes,
        &burn::tensor::Device::flex(),
        Default::default(),
        &mut |_, _| {},
    )
    .map(|_| ())
}

#[test]
fn truncated_gguf_names_the_file_and_what_is_missing() {
    let path = builtin_gguf(BuiltinModel::SmolLm2_135m);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // Cut inside the metadata: the reader says which key it was reading.
    let err = load_bytes(&bytes[..5_000]).expect_err("header cut");
    assert!(
        matches!(&err, LoadError::Gguf { file, source: GgufError::Truncated { .. } } if file == "cut.gguf"),
        "{err}"
    );

    // Cut inside the tensor data: the first tensor past the end is named.
    let err = load_bytes(&bytes[..bytes.len() / 2]).expect_err("data cut");
    let message = err.to_string();
    assert!(message.starts_with("cut.gguf: "), "{message}");
    assert!(
        message.contains("blk.") || message.contains("output"),
        "{message}"
    );
}

#[test]
fn corrupted_gguf_header_is_an_error_not_a_panic() {
    let path = builtin_gguf(BuiltinModel::SmolLm2_135m);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[0] = b'X';
    assert!(matches!(
        load_bytes(&bytes),
        Err(LoadError::Gguf {
            source: GgufError::BadMagic,
            ..
        })
    ));
    // A tensor count far beyond what the file could hold is refused before allocating.
    bytes[0] = b'G';
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_bytes(&bytes).is_err());
}
