//! Errors of the GGUF reader and dequantizer.
//!
//! Messages name the offending key or tensor; callers add the file path.

use thiserror::Error;

/// Everything that can go wrong while reading a GGUF file or dequantizing its tensors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with the `GGUF` magic.
    #[error("not a GGUF file: bad magic")]
    BadMagic,

    /// Only versions 2 and 3 are read. A big-endian file also lands here, because its version
    /// reads byte-swapped (3 becomes 50331648).
    #[error("unsupported GGUF version {0} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion(u32),

    /// A metadata value (or array element) has a type id outside the 13 the format defines.
    #[error("unknown GGUF metadata value type {0}")]
    UnknownMetadataType(u32),

    /// A tensor has a GGML type id that this reader cannot dequantize.
    #[error("tensor `{tensor}` has unknown or unsupported GGML type id {type_id}")]
    UnknownTensorType {
        /// Tensor name.
        tensor: String,
        /// The type id as stored in the file.
        type_id: u32,
    },

    /// The file ends before a field that the header says is there.
    #[error("GGUF file truncated: {what} needs {needed} bytes, only {available} left")]
    Truncated {
        /// Which field was being read, naming its key or tensor.
        what: String,
        /// Bytes the field needs (saturated at `u64::MAX` when the count overflows).
        needed: u64,
        /// Bytes left in the file at that point.
        available: u64,
    },

    /// A count is above the reader's sanity cap.
    #[error("GGUF file declares {count} {what}, more than the limit of {limit}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The declared count.
        count: u64,
        /// The cap.
        limit: u64,
    },

    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string, naming its key or tensor.
        what: String,
    },

    /// A boolean metadata value is neither 0 nor 1.
    #[error("{what} is a bool stored as {value}, expected 0 or 1")]
    InvalidBool {
        /// Which value, naming its key.
        what: String,
        /// The stored byte.
        value: u8,
    },

    /// A metadata value that the reader itself interprets (`general.alignment`) is unusable.
    #[error("metadata key `{key}`: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// Why the value is rejected.
        reason: String,
    },

    /// The same metadata key appears twice; lookups would be ambiguous.
    #[error("metadata key `{0}` appears more than once")]
    DuplicateKey(String),

    /// The same tensor name appears twice; lookups would be ambiguous.
    #[error("tensor `{0}` appears more than once")]
    DuplicateTensor(String),

    /// Metadata arrays nest deeper than the reader allows.
    #[error(
        "metadata arrays nest deeper than {} levels",
        super::reader::MAX_ARRAY_NESTING
    )]
    NestingTooDeep,

    /// A tensor's data range does not lie inside the file.
    #[error(
        "tensor `{tensor}` data (offset {offset}, {size} bytes after the data section start \
         {data_offset}) lies outside the file of {file_len} bytes"
    )]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Size of the tensor data in bytes.
        size: u64,
        /// Absolute start of the data section.
        data_offset: u64,
        /// Length of the file.
        file_len: u64,
    },

    /// A tensor's offset is not a multiple of the file's alignment, which writers always
    /// guarantee; it signals a corrupt tensor table.
    #[error("tensor `{tensor}` offset {offset} is not a multiple of the alignment {alignment}")]
    TensorMisaligned {
        /// Tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },

    /// A tensor's dimensions are unusable (too many, zero, or an overflowing element count).
    #[error("tensor `{tensor}` has a bad shape {dims:?}: {reason}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// The dimensions read so far, fastest-varying first.
        dims: Vec<u64>,
        /// What is wrong with them.
        reason: &'static str,
    },

    /// No tensor of that name is in the file.
    #[error("tensor `{0}` not found")]
    MissingTensor(String),

    /// A tensor's row length (`dims[0]`) is not a whole number of quantization blocks.
    #[error(
        "tensor `{tensor}` row length {row_len} is not a multiple of its block size {block_size}"
    )]
    MisalignedRowLength {
        /// Tensor name.
        tensor: String,
        /// `dims[0]`.
        row_len: u64,
        /// Elements per block of the tensor's type.
        block_size: u64,
    },

    /// [`dequantize`](super::dequantize) was asked for a count that is not a whole number
    /// of blocks.
    #[error("{n_elements} elements of {ty} are not a whole number of {block_size}-element blocks")]
    NotBlockMultiple {
        /// Type name.
        ty: &'static str,
        /// Requested element count.
        n_elements: u64,
        /// Elements per block.
        block_size: u64,
    },

    /// F32 was given where the kernels need a block type or a 16-bit float.
    #[error(
        "{ty} has no kernel: the kernels multiply Q4_0..Q8_0, Q2_K..Q6_K, F16 and BF16 (f32 matrices are dense)"
    )]
    UnsupportedKernel {
        /// Type name.
        ty: &'static str,
    },

    /// [`dequantize`](super::dequantize) got a byte slice of the wrong length.
    #[error("{n_elements} elements of {ty} take {expected} bytes, got {actual}")]
    DataSizeMismatch {
        /// Type name.
        ty: &'static str,
        /// Requested element count.
        n_elements: u64,
        /// Bytes that count takes.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
}
