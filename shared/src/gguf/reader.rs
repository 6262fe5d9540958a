//! GGUF container parsing: header, metadata key-values and the tensor table.
//!
//! Layout (little-endian): magic `GGUF`, version `u32`, tensor count `u64`, metadata count
//! `u64`, the metadata entries (string key, `u32` value type, value), the tensor infos (string
//! name, `u32` dimension count, `u64` dimensions fastest-varying first, `u32` GGML type, `u64`
//! offset), then padding up to the alignment where the tensor data section starts. Strings are
//! a `u64` byte length followed by UTF-8 bytes.
//!
//! The input is treated as hostile: every count is checked against the bytes left in the file
//! (at its smallest possible encoding) before anything is allocated for it.

use std::collections::HashSet;

use super::quant::dequantize;
use super::{GgmlType, GgufError};

/// Arrays may nest this many levels (an array of arrays is two levels).
pub(super) const MAX_ARRAY_NESTING: usize = 4;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA_KVS: u64 = 1 << 20;
/// Each array element becomes a 32-byte [`MetadataValue`], so even a `u8` array expands 32-fold
/// in memory; this total cap bounds that. Real vocabularies hold a few hundred thousand tokens.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// Smallest metadata entry: empty key (length prefix only), value type, one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest tensor info: empty name, zero dimensions, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// A parsed GGUF header: metadata and tensor table. Tensor data stays in the caller's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key-values in file order; keys are unique.
    pub metadata: Vec<(String, MetadataValue)>,
    /// Tensor infos in file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset where the tensor data section starts.
    pub data_offset: u64,
    /// Alignment of the data section and of every tensor offset (`general.alignment`, default 32).
    pub alignment: u64,
}

/// A metadata value. GGUF arrays are homogeneous; the element type of an empty array is not kept.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7, stored as one byte 0 or 1.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
    /// Type 9.
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    /// The value as `u64` if it is an integer of any width and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as `f64` if it is a float or an integer; writers are not consistent about
    /// which one they use for hyperparameters such as `rope.freq_base`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            // Precision loss above 2^53 is acceptable for a float view.
            MetadataValue::U64(v) => Some(v as f64),
            MetadataValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as stored in GGUF: `dims[0]` is the fastest-varying (row length), so the
    /// row-major shape is `dims` reversed.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data relative to [`GgufFile::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`); saturates at `u64::MAX` for shapes whose product
    /// overflows, which [`GgufFile::parse`] never returns.
    pub fn n_elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
    }

    /// Size of the tensor data in bytes.
    ///
    /// # Errors
    ///
    /// [`GgufError::MisalignedRowLength`] if `dims[0]` is not a whole number of blocks,
    /// [`GgufError::BadShape`] if the size overflows `u64`.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        let overflow = || GgufError::BadShape {
            tensor: self.name.clone(),
            dims: self.dims.clone(),
            reason: "the size overflows 64 bits",
        };
        let n_elements = self.checked_elements().ok_or_else(overflow)?;
        let block_size = self.ggml_type.block_size() as u64;
        // A zero-dimensional tensor is a scalar: one row of one element.
        let row_len = self.dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(block_size) {
            return Err(GgufError::MisalignedRowLength {
                tensor: self.name.clone(),
                row_len,
                block_size,
            });
        }
        (n_elements / block_size)
            .checked_mul(self.ggml_type.type_size() as u64)
            .ok_or_else(overflow)
    }

    fn checked_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }
}

impl GgufFile {
    /// Parses header, metadata and tensor infos from the start of the file. `bytes` is the whole
    /// file (callers memory-map it); every tensor's data range is checked to lie inside it.
    ///
    /// # Errors
    ///
    /// The first malformed field, as the matching [`GgufError`] variant: never a panic, and
    /// nothing is allocated for a count before it is checked against the bytes left.
    pub fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let file = GgufFile::parse_header(bytes)?;
        for info in &file.tensors {
            file.tensor_bytes(bytes, info)?;
        }
        Ok(file)
    }

    /// Parses header, metadata and tensor infos from a prefix of the file that holds at least
    /// the header (the browser reads one before downloading the whole file, to show what the
    /// model is and what memory it needs). Tensor data ranges are not checked: see [`parse`].
    ///
    /// # Errors
    ///
    /// As [`parse`], except that no tensor data is checked.
    ///
    /// [`parse`]: GgufFile::parse
    pub fn parse_header(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let mut p = Parser {
            bytes,
            pos: 0,
            array_elements_left: MAX_ARRAY_ELEMENTS,
        };
        if p.fixed::<4>(&|| "magic".to_owned())? != *b"GGUF" {
            return Err(GgufError::BadMagic);
        }
        let version = u32::from_le_bytes(p.fixed(&|| "version".to_owned())?);
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = p.u64(&|| "tensor count".to_owned())?;
        let kv_count = p.u64(&|| "metadata count".to_owned())?;
        check_limit(tensor_count, MAX_TENSORS, "tensors")?;
        check_limit(kv_count, MAX_METADATA_KVS, "metadata key-value pairs")?;

        p.check_count(kv_count, MIN_KV_BYTES, &|| {
            format!("{kv_count} metadata key-value pairs")
        })?;
        let mut metadata = Vec::with_capacity(to_usize(kv_count));
        for i in 0..kv_count {
            let key = p.string(&|| format!("key of metadata entry #{i}"))?;
            let value_type = p.u32(&|| format!("value type of metadata key `{key}`"))?;
            let value = p.value(ValueType::from_id(value_type)?, 0, &key)?;
            metadata.push((key, value));
        }
        let mut keys = HashSet::with_capacity(metadata.len());
        if let Some((key, _)) = metadata.iter().find(|(k, _)| !keys.insert(k.as_str())) {
            return Err(GgufError::DuplicateKey(key.clone()));
        }
        let alignment = alignment(&metadata)?;

        p.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, &|| {
            format!("{tensor_count} tensor infos")
        })?;
        let mut tensors = Vec::with_capacity(to_usize(tensor_count));
        for i in 0..tensor_count {
            tensors.push(p.tensor_info(i)?);
        }
        let mut names = HashSet::with_capacity(tensors.len());
        if let Some(t) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(GgufError::DuplicateTensor(t.name.clone()));
        }

        let data_offset = (p.pos as u64)
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::InvalidMetadata {
                key: ALIGNMENT_KEY.to_owned(),
                reason: format!("alignment {alignment} puts the data section past 2^64"),
            })?;
        let file = GgufFile {
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        };
        for info in &file.tensors {
            if !info.offset.is_multiple_of(alignment) {
                return Err(GgufError::TensorMisaligned {
                    tensor: info.name.clone(),
                    offset: info.offset,
                    alignment,
                });
            }
        }
        Ok(file)
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, bounds-checked against `bytes` (the whole file).
    ///
    /// # Errors
    ///
    /// [`GgufError::TensorOutOfBounds`] if the data does not lie inside `bytes`, and the errors
    /// of [`TensorInfo::n_bytes`].
    pub fn tensor_bytes<'a>(
        &self,
        bytes: &'a [u8],
        info: &TensorInfo,
    ) -> Result<&'a [u8], GgufError> {
        let size = info.n_bytes()?;
        let out_of_bounds = || GgufError::TensorOutOfBounds {
            tensor: info.name.clone(),
            offset: info.offset,
            size,
            data_offset: self.data_offset,
            file_len: bytes.len() as u64,
        };
        let start = self
            .data_offset
            .checked_add(info.offset)
            .ok_or_else(out_of_bounds)?;
        let end = start.checked_add(size).ok_or_else(out_of_bounds)?;
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(start), Ok(end)) => bytes.get(start..end).ok_or_else(out_of_bounds),
            _ => Err(out_of_bounds()),
        }
    }

    /// Dequantized `f32` values of the tensor named `name`, row-major as gguf-py returns them
    /// (that is, in storage order; the row-major shape is `dims` reversed).
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingTensor`] if there is no such tensor, and the errors of
    /// [`GgufFile::tensor_bytes`].
    pub fn tensor_f32(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        let data = self.tensor_bytes(bytes, info)?;
        let n_elements = usize::try_from(info.n_elements()).map_err(|_| GgufError::BadShape {
            tensor: info.name.clone(),
            dims: info.dims.clone(),
            reason: "too many elements for this platform",
        })?;
        dequantize(info.ggml_type, data, n_elements)
    }
}

/// Metadata value types, by their GGUF ids.
#[derive(Debug, Clone, Copy)]
enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Result<ValueType, GgufError> {
        Ok(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return Err(GgufError::UnknownMetadataType(id)),
        })
    }

    /// Fewest bytes one value of this type can take in the file: the whole value for scalars,
    /// the length prefix of an empty string, the element type and count of an empty array.
    fn min_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 4 + 8,
        }
    }
}

/// Lazily built description of the field being read, for error messages: building it only on
/// failure keeps the hot path free of formatting.
type What<'w> = &'w dyn Fn() -> String;

/// A cursor over the file. Invariant: `pos <= bytes.len()`.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Remaining budget of array elements for the whole file.
    array_elements_left: u64,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn truncated(&self, what: What<'_>, needed: u64) -> GgufError {
        GgufError::Truncated {
            what: what(),
            needed,
            available: self.rest().len() as u64,
        }
    }

    fn take(&mut self, n: u64, what: What<'_>) -> Result<&'a [u8], GgufError> {
        let rest = self.rest();
        match usize::try_from(n)
            .ok()
            .and_then(|n| rest.split_at_checked(n))
        {
            Some((head, _)) => {
                self.pos += head.len();
                Ok(head)
            }
            None => Err(self.truncated(what, n)),
        }
    }

    fn fixed<const N: usize>(&mut self, what: What<'_>) -> Result<[u8; N], GgufError> {
        match self.rest().first_chunk::<N>() {
            Some(&chunk) => {
                self.pos += N;
                Ok(chunk)
            }
            None => Err(self.truncated(what, N as u64)),
        }
    }

    fn u32(&mut self, what: What<'_>) -> Result<u32, GgufError> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What<'_>) -> Result<u64, GgufError> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_size` bytes each can fit in the rest of the
    /// file; called before allocating room for `count` items.
    fn check_count(&self, count: u64, min_size: u64, what: What<'_>) -> Result<(), GgufError> {
        let needed = count.saturating_mul(min_size);
        if needed > self.rest().len() as u64 {
            return Err(self.truncated(what, needed));
        }
        Ok(())
    }

    fn string(&mut self, what: What<'_>) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 { what: what() }),
        }
    }

    /// Reads one value of type `ty` for `key`; `depth` counts the arrays it is inside.
    fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
        key: &str,
    ) -> Result<MetadataValue, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.fixed(&what)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.fixed(&what)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.fixed(&what)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.fixed(&what)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.fixed(&what)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.fixed(&what)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.fixed(&what)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.fixed(&what)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.fixed(&what)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.fixed(&what)?)),
            ValueType::Bool => match self.fixed::<1>(&what)? {
                [0] => MetadataValue::Bool(false),
                [1] => MetadataValue::Bool(true),
                [value] => {
                    return Err(GgufError::InvalidBool {
                        what: what(),
                        value,
                    });
                }
            },
            ValueType::String => MetadataValue::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep);
                }
                let element_type = ValueType::from_id(self.u32(&what)?)?;
                let count = self.u64(&what)?;
                self.check_count(count, element_type.min_size(), &|| {
                    format!("{count} array elements of metadata key `{key}`")
                })?;
                if count > self.array_elements_left {
                    return Err(GgufError::TooMany {
                        what: "metadata array elements in total",
                        count: (MAX_ARRAY_ELEMENTS - self.array_elements_left)
                            .saturating_add(count),
                        limit: MAX_ARRAY_ELEMENTS,
                    });
                }
                self.array_elements_left -= count;
                let mut elements = Vec::with_capacity(to_usize(count));
                for _ in 0..count {
                    elements.push(self.value(element_type, depth + 1, key)?);
                }
                MetadataValue::Array(elements)
            }
        })
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&|| format!("name of tensor #{index}"))?;
        let bad_shape = |dims: &[u64], reason| GgufError::BadShape {
            tensor: name.clone(),
            dims: dims.to_vec(),
            reason,
        };
        let n_dims = self.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(bad_shape(&[], "more than 4 dimensions"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&|| format!("dimensions of tensor `{name}`"))?);
        }
        if dims.contains(&0) {
            return Err(bad_shape(&dims, "a dimension is zero"));
        }
        let type_id = self.u32(&|| format!("type of tensor `{name}`"))?;
        let offset = self.u64(&|| format!("data offset of tensor `{name}`"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType {
                tensor: name,
                type_id,
            });
        };
        let info = TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        };
        // Validates the row length against the block size and the size against overflow.
        info.n_bytes()?;
        Ok(info)
    }
}

fn check_limit(count: u64, limit: u64, what: &'static str) -> Result<(), GgufError> {
    if count > limit {
        return Err(GgufError::TooMany { what, count, limit });
    }
    Ok(())
}

/// Capacity hint for a count already checked against the file length (so it fits in `usize`).
fn to_usize(count: u64) -> usize {
    usize::try_from(count).unwrap_or(0)
}

fn alignment(metadata: &[(String, MetadataValue)]) -> Result<u64, GgufError> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() => Ok(a),
        Some(a) => Err(GgufError::InvalidMetadata {
            key: ALIGNMENT_KEY.to_owned(),
            reason: format!("alignment {a} is not a power of two"),
        }),
        None => Err(GgufError::InvalidMetadata {
            key: ALIGNMENT_KEY.to_owned(),
            reason: "alignment is not a non-negative integer".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::super::fixture_path;
    use super::*;

    /// Little-endian byte writer for hand-made (valid or broken) GGUF files.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn raw(&mut self, v: &[u8]) -> &mut Self {
            self.0.extend(v);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64).raw(s.as_bytes())
        }
        fn header(&mut self, version: u32, tensors: u64, kvs: u64) -> &mut Self {
            self.raw(b"GGUF").u32(version).u64(tensors).u64(kvs)
        }
        fn value(&mut self, v: &MetadataValue) -> &mut Self {
            // Writing to a Vec cannot fail.
            let _ = v.write(&mut self.0);
            self
        }
        fn kv(&mut self, key: &str, v: &MetadataValue) -> &mut Self {
            self.str(key).u32(v.type_id()).value(v)
        }
        fn pad_to(&mut self, alignment: usize) -> &mut Self {
            while !self.0.len().is_multiple_of(alignment) {
                self.0.push(0);
            }
            self
        }
    }

    struct TestTensor {
        name: &'static str,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
    }

    /// Writes a valid file: header, metadata, tensor infos with aligned offsets, data.
    fn build(version: u32, metadata: &[(&str, MetadataValue)], tensors: &[TestTensor]) -> Vec<u8> {
        let alignment = metadata
            .iter()
            .find(|(k, _)| *k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut w = W::default();
        w.header(version, tensors.len() as u64, metadata.len() as u64);
        for (k, v) in metadata {
            w.kv(k, v);
        }
        let mut offset = 0;
        for t in tensors {
            w.str(t.name).u32(t.dims.len() as u32);
            for &d in &t.dims {
                w.u64(d);
            }
            w.u32(t.ty.id()).u64(offset as u64);
            offset = (offset + t.data.len()).next_multiple_of(alignment);
        }
        for t in tensors {
            w.pad_to(alignment).raw(&t.data);
        }
        w.0
    }

    fn all_types_metadata() -> Vec<(&'static str, MetadataValue)> {
        use MetadataValue as V;
        vec![
            ("general.architecture", V::String("llama".into())),
            ("t.u8", V::U8(200)),
            ("t.i8", V::I8(-100)),
            ("t.u16", V::U16(60000)),
            ("t.i16", V::I16(-30000)),
            ("t.u32", V::U32(4_000_000_000)),
            ("t.i32", V::I32(-2_000_000_000)),
            ("t.f32", V::F32(1.5e-5)),
            ("t.bool", V::Bool(true)),
            ("t.string", V::String("héllo ✓".into())),
            ("t.u64", V::U64(u64::MAX)),
            ("t.i64", V::I64(i64::MIN)),
            ("t.f64", V::F64(-0.25)),
            ("t.empty", V::Array(vec![])),
            (
                "t.strings",
                V::Array(vec![V::String("a".into()), V::String(String::new())]),
            ),
            ("t.bools", V::Array(vec![V::Bool(false), V::Bool(true)])),
            ("t.f32s", V::Array(vec![V::F32(1.0), V::F32(-2.0)])),
            (
                "t.nested",
                V::Array(vec![
                    V::Array(vec![V::I64(1), V::I64(-2)]),
                    V::Array(vec![]),
                    V::Array(vec![V::I64(3)]),
                ]),
            ),
        ]
    }

    fn test_tensors() -> Vec<TestTensor> {
        let f32s: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        // One Q8_0 block with d = 2.0 (f16 0x4000) and q = -16..16.
        let mut q8 = vec![0x00, 0x40];
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        vec![
            TestTensor {
                name: "a.f32",
                dims: vec![3, 2],
                ty: GgmlType::F32,
                data: f32s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            TestTensor {
                name: "b.q8_0",
                dims: vec![32],
                ty: GgmlType::Q8_0,
                data: q8,
            },
        ]
    }

    fn valid_file() -> Vec<u8> {
        build(3, &all_types_metadata(), &test_tensors())
    }

    fn fixture_file() -> Vec<u8> {
        let path = fixture_path("quant/types.gguf");
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set REFUSAL_FIXTURES to the fixtures dir)",
                path.display()
            )
        })
    }

    fn parse_err(bytes: &[u8]) -> GgufError {
        GgufFile::parse(bytes).expect_err("parse should fail")
    }

    #[test]
    fn parses_all_metadata_types_and_tensors() {
        for version in [2, 3] {
            let bytes = build(version, &all_types_metadata(), &test_tensors());
            let file = GgufFile::parse(&bytes).expect("valid file");
            assert_eq!(file.version, version);
            let want: Vec<(String, MetadataValue)> = all_types_metadata()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(file.metadata, want);
            assert_eq!(file.alignment, 32);
            assert_eq!(file.data_offset % 32, 0);
            assert_eq!(file.tensors.len(), 2);

            let a = file.tensor("a.f32").expect("a.f32");
            assert_eq!(
                (a.dims.as_slice(), a.ggml_type, a.offset),
                (&[3, 2][..], GgmlType::F32, 0)
            );
            assert_eq!((a.n_elements(), a.n_bytes().expect("size")), (6, 24));
            assert_eq!(
                file.tensor_f32(&bytes, "a.f32").expect("a.f32 data"),
                [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
            );
            let b = file.tensor("b.q8_0").expect("b.q8_0");
            assert_eq!((b.offset, b.n_bytes().expect("size")), (32, 34));
            let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 2.0).collect();
            assert_eq!(
                file.tensor_f32(&bytes, "b.q8_0").expect("b.q8_0 data"),
                want
            );
            assert_eq!(file.tensor_bytes(&bytes, b).expect("raw").len(), 34);
            assert!(file.tensor("c").is_none());
        }
    }

    #[test]
    fn accessors() {
        use MetadataValue as V;
        let bytes = valid_file();
        let file = GgufFile::parse(&bytes).expect("valid file");
        let get = |k: &str| file.get(k).unwrap_or_else(|| panic!("{k}"));
        assert_eq!(get("general.architecture").as_str(), Some("llama"));
        assert_eq!(get("t.u8").as_u64(), Some(200));
        assert_eq!(get("t.u64").as_u64(), Some(u64::MAX));
        assert_eq!(get("t.i8").as_u64(), None);
        assert_eq!(V::I32(7).as_u64(), Some(7));
        assert_eq!(V::I64(0).as_u64(), Some(0));
        assert_eq!(get("t.i16").as_f64(), Some(-30000.0));
        assert_eq!(get("t.f32").as_f64(), Some(f64::from(1.5e-5f32)));
        assert_eq!(get("t.f64").as_f64(), Some(-0.25));
        assert_eq!(get("t.bool").as_bool(), Some(true));
        assert_eq!(get("t.string").as_bool(), None);
        assert_eq!(get("t.f32").as_u64(), None);
        assert_eq!(get("t.string").as_array(), None);
        let nested = get("t.nested").as_array().expect("array");
        assert_eq!(nested[0].as_array().map(<[_]>::len), Some(2));
        assert_eq!(get("t.empty").as_array(), Some(&[][..]));
        assert!(file.get("missing").is_none());
    }

    #[test]
    fn honours_general_alignment() {
        let metadata = [(ALIGNMENT_KEY, MetadataValue::U32(64))];
        let bytes = build(3, &metadata, &test_tensors());
        let file = GgufFile::parse(&bytes).expect("valid file");
        assert_eq!(file.alignment, 64);
        assert_eq!(file.data_offset % 64, 0);
        assert_eq!(file.tensor("b.q8_0").expect("b").offset, 64);
        assert_eq!(file.tensor_f32(&bytes, "a.f32").expect("a")[5], 1.5);

        for bad in [
            MetadataValue::U32(0),
            MetadataValue::U32(48),
            MetadataValue::I32(-32),
        ] {
            let bytes = build(3, &[(ALIGNMENT_KEY, bad)], &[]);
            let err = parse_err(&bytes);
            assert!(matches!(&err, GgufError::InvalidMetadata { key, .. } if key == ALIGNMENT_KEY));
            assert!(err.to_string().contains(ALIGNMENT_KEY));
        }
        let bytes = build(
            3,
            &[(ALIGNMENT_KEY, MetadataValue::String("32".into()))],
            &[],
        );
        assert!(matches!(
            parse_err(&bytes),
            GgufError::InvalidMetadata { .. }
        ));
    }

    #[test]
    fn empty_file_without_tensors_or_metadata() {
        let bytes = build(3, &[], &[]);
        let file = GgufFile::parse(&bytes).expect("valid file");
        assert!(file.metadata.is_empty() && file.tensors.is_empty());
        assert_eq!(file.data_offset, 32);
    }

    #[test]
    fn rejects_bad_magic_and_versions() {
        let mut bytes = valid_file();
        bytes[0] = b'g';
        assert!(matches!(parse_err(&bytes), GgufError::BadMagic));
        for version in [0, 1, 4, 3 << 24] {
            let mut bytes = valid_file();
            bytes[4..8].copy_from_slice(&u32::to_le_bytes(version));
            assert!(matches!(parse_err(&bytes), GgufError::UnsupportedVersion(v) if v == version));
        }
        assert!(matches!(parse_err(b"GG"), GgufError::Truncated { .. }));
        assert!(matches!(parse_err(b""), GgufError::Truncated { .. }));
    }

    #[test]
    fn rejects_unknown_metadata_types() {
        let mut w = W::default();
        w.header(3, 0, 1).str("k").u32(13).u32(0);
        assert!(matches!(
            parse_err(&w.0),
            GgufError::UnknownMetadataType(13)
        ));
        let mut w = W::default();
        w.header(3, 0, 1).str("k").u32(9).u32(99).u64(0);
        assert!(matches!(
            parse_err(&w.0),
            GgufError::UnknownMetadataType(99)
        ));
    }

    /// `levels` arrays nested in each other around one u8.
    fn nested(levels: usize) -> MetadataValue {
        (0..levels).fold(MetadataValue::U8(1), |v, _| MetadataValue::Array(vec![v]))
    }

    #[test]
    fn limits_array_nesting() {
        let ok = build(3, &[("k", nested(MAX_ARRAY_NESTING))], &[]);
        let file = GgufFile::parse(&ok).expect("nesting at the limit");
        assert_eq!(file.get("k"), Some(&nested(MAX_ARRAY_NESTING)));
        let deep = build(3, &[("k", nested(MAX_ARRAY_NESTING + 1))], &[]);
        assert!(matches!(parse_err(&deep), GgufError::NestingTooDeep));
    }

    #[test]
    fn rejects_huge_counts_before_allocating() {
        let mut w = W::default();
        w.header(3, MAX_TENSORS + 1, 0);
        assert!(matches!(
            parse_err(&w.0),
            GgufError::TooMany {
                what: "tensors",
                ..
            }
        ));
        let mut w = W::default();
        w.header(3, 0, u64::MAX);
        assert!(matches!(
            parse_err(&w.0),
            GgufError::TooMany {
                count: u64::MAX,
                ..
            }
        ));
        // Within the caps but more than the file can hold.
        let mut w = W::default();
        w.header(3, MAX_TENSORS, 0);
        assert!(matches!(parse_err(&w.0), GgufError::Truncated { .. }));
        let mut w = W::default();
        w.header(3, 0, MAX_METADATA_KVS);
        assert!(matches!(parse_err(&w.0), GgufError::Truncated { .. }));

        // String lengths.
        let mut w = W::default();
        w.header(3, 0, 1).u64(u64::MAX).raw(&[b'k'; 64]);
        assert!(matches!(
            parse_err(&w.0),
            GgufError::Truncated {
                needed: u64::MAX,
                ..
            }
        ));
        let mut w = W::default();
        w.header(3, 0, 1)
            .str("tokenizer.ggml.model")
            .u32(8)
            .u64(1 << 40);
        let err = parse_err(&w.0);
        assert!(matches!(
            err,
            GgufError::Truncated {
                needed: 1_099_511_627_776,
                ..
            }
        ));
        assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");

        // Array counts, checked at each element type's smallest encoding.
        for (ty, min) in [(0u32, 1u64), (8, 8), (9, 12), (12, 8)] {
            let mut w = W::default();
            w.header(3, 0, 1)
                .str("tokens")
                .u32(9)
                .u32(ty)
                .u64(u64::MAX / min);
            let err = parse_err(&w.0);
            assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
            assert!(err.to_string().contains("tokens"), "{err}");
        }
        // An array exactly as long as the bytes left is fine.
        let mut w = W::default();
        w.header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(0)
            .u64(3)
            .raw(&[1, 2, 3]);
        let file = GgufFile::parse(&w.0).expect("fits");
        assert_eq!(
            file.get("k").and_then(|v| v.as_array()).map(<[_]>::len),
            Some(3)
        );
    }

    #[test]
    fn caps_array_elements_in_total() {
        // Two 3-element arrays against a budget of 5 (the real cap would need 16M elements).
        let mut w = W::default();
        for _ in 0..2 {
            w.u32(0).u64(3).raw(&[1, 2, 3]);
        }
        let mut p = Parser {
            bytes: &w.0,
            pos: 0,
            array_elements_left: 5,
        };
        assert!(p.value(ValueType::Array, 0, "a").is_ok());
        let err = p.value(ValueType::Array, 0, "b").expect_err("over budget");
        assert!(matches!(
            err,
            GgufError::TooMany {
                limit: MAX_ARRAY_ELEMENTS,
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_strings_and_bools() {
        let mut w = W::default();
        w.header(3, 0, 1).u64(2).raw(&[0xC3, 0x28]).u32(0).raw(&[0]);
        let err = parse_err(&w.0);
        assert!(
            matches!(&err, GgufError::InvalidUtf8 { what } if what.contains("#0")),
            "{err}"
        );
        let mut w = W::default();
        w.header(3, 0, 1).str("k.name").u32(8).u64(1).raw(&[0xFF]);
        let err = parse_err(&w.0);
        assert!(matches!(&err, GgufError::InvalidUtf8 { what } if what.contains("k.name")));
        let mut w = W::default();
        w.header(3, 0, 1).str("k.flag").u32(7).raw(&[2]);
        let err = parse_err(&w.0);
        assert!(matches!(err, GgufError::InvalidBool { value: 2, .. }));
        assert!(err.to_string().contains("k.flag"));
    }

    #[test]
    fn rejects_duplicates() {
        let metadata = [("k", MetadataValue::U8(1)), ("k", MetadataValue::U8(2))];
        let bytes = build(3, &metadata, &[]);
        assert!(matches!(parse_err(&bytes), GgufError::DuplicateKey(k) if k == "k"));
        let mut tensors = test_tensors();
        tensors[1].name = "a.f32";
        tensors[1].dims = vec![1];
        tensors[1].ty = GgmlType::F32;
        tensors[1].data = vec![0; 4];
        let bytes = build(3, &[], &tensors);
        assert!(matches!(parse_err(&bytes), GgufError::DuplicateTensor(t) if t == "a.f32"));
    }

    /// A file with one tensor info written from raw fields, and `data_len` bytes of data.
    fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
        let mut w = W::default();
        w.header(3, 1, 0).str("blk.0.w").u32(dims.len() as u32);
        for &d in dims {
            w.u64(d);
        }
        w.u32(type_id)
            .u64(offset)
            .pad_to(32)
            .raw(&vec![0; data_len]);
        w.0
    }

    #[test]
    fn validates_tensor_infos() {
        let ok = one_tensor(&[32, 2], 8, 0, 68);
        let file = GgufFile::parse(&ok).expect("valid");
        assert_eq!(
            file.tensor_f32(&ok, "blk.0.w").expect("zeros"),
            vec![0.0; 64]
        );

        let shape_err = |bytes: &[u8]| {
            let err = parse_err(bytes);
            assert!(matches!(&err, GgufError::BadShape { tensor, .. } if tensor == "blk.0.w"));
            assert!(err.to_string().contains("blk.0.w"));
        };
        shape_err(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4));
        shape_err(&one_tensor(&[4, 0], 0, 0, 16));
        shape_err(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 0));
        shape_err(&one_tensor(&[1 << 62, 2], 0, 0, 0));
        let mut w = W::default();
        w.header(3, 1, 0).str("blk.0.w").u32(u32::MAX).raw(&[0; 64]);
        shape_err(&w.0);

        let err = parse_err(&one_tensor(&[32], 16, 0, 64));
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, type_id: 16 } if tensor == "blk.0.w")
        );
        assert!(err.to_string().contains("blk.0.w"));

        let err = parse_err(&one_tensor(&[48, 2], 12, 0, 1 << 10));
        assert!(matches!(
            &err,
            GgufError::MisalignedRowLength { tensor, row_len: 48, block_size: 256 } if tensor == "blk.0.w"
        ));

        // Data past the end of the file, by a byte or by an overflowing offset.
        let err = parse_err(&one_tensor(&[32, 2], 8, 0, 67));
        assert!(matches!(&err, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "blk.0.w"));
        assert!(err.to_string().contains("blk.0.w"));
        let err = parse_err(&one_tensor(&[32], 8, u64::MAX - 31, 34));
        assert!(matches!(err, GgufError::TensorOutOfBounds { .. }));
        let err = parse_err(&one_tensor(&[32], 8, 16, 64));
        assert!(matches!(
            err,
            GgufError::TensorMisaligned {
                offset: 16,
                alignment: 32,
                ..
            }
        ));
    }

    #[test]
    fn tensor_access_errors() {
        let bytes = valid_file();
        let file = GgufFile::parse(&bytes).expect("valid");
        let err = file.tensor_f32(&bytes, "nope").expect_err("missing");
        assert!(matches!(&err, GgufError::MissingTensor(t) if t == "nope"));
        assert!(err.to_string().contains("nope"));
        // A shorter buffer than the one parsed is still bounds-checked.
        let short = &bytes[..bytes.len() - 1];
        let err = file.tensor_f32(short, "b.q8_0").expect_err("short");
        assert!(matches!(err, GgufError::TensorOutOfBounds { .. }));
        let forged = TensorInfo {
            name: "forged".into(),
            dims: vec![u64::MAX, 2],
            ggml_type: GgmlType::F32,
            offset: 0,
        };
        assert_eq!(forged.n_elements(), u64::MAX);
        assert!(matches!(forged.n_bytes(), Err(GgufError::BadShape { .. })));
        assert!(file.tensor_bytes(&bytes, &forged).is_err());
    }

    /// Parses `bytes` and, if that succeeds, dequantizes every tensor; a panic anywhere fails
    /// the test naming `label`.
    fn must_not_panic(bytes: &[u8], label: &dyn std::fmt::Display) -> bool {
        let outcome = catch_unwind(AssertUnwindSafe(|| match GgufFile::parse(bytes) {
            Ok(file) => {
                for t in &file.tensors {
                    file.tensor_f32(bytes, &t.name)
                        .expect("parsed tensors dequantize");
                }
                true
            }
            Err(e) => {
                // Formatting must not panic either.
                assert!(!e.to_string().is_empty());
                false
            }
        }));
        outcome.unwrap_or_else(|_| panic!("panicked on {label}"))
    }

    /// Cuts at every byte up to the data section and at a sample of the rest; every cut before
    /// the end of the last tensor's data must fail.
    fn check_truncations(bytes: &[u8]) {
        let file = GgufFile::parse(bytes).expect("valid");
        let data_end = file
            .tensors
            .iter()
            .map(|t| file.data_offset + t.offset + t.n_bytes().expect("size"))
            .max()
            .unwrap_or(file.data_offset) as usize;
        let header_end = (file.data_offset as usize).min(bytes.len());
        let cuts = (0..=header_end)
            .chain((header_end..bytes.len()).step_by(97))
            .chain([data_end - 1]);
        for cut in cuts {
            let ok = must_not_panic(&bytes[..cut], &format_args!("truncation at {cut}"));
            assert!(
                !ok || cut >= data_end,
                "truncation at {cut} of {data_end} parsed"
            );
        }
        assert!(must_not_panic(bytes, &"the whole file"));
    }

    #[test]
    fn truncation_at_every_header_byte_fails_cleanly() {
        check_truncations(&valid_file());
        check_truncations(&fixture_file());
    }

    /// xorshift64*: a deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn byte_mutations_never_panic() {
        for (label, bytes) in [("built", valid_file()), ("fixture", fixture_file())] {
            let header_end = GgufFile::parse(&bytes).expect("valid").data_offset as usize;
            // Every header byte flipped three ways.
            for pos in 0..header_end {
                for mask in [0x01, 0x80, 0xFF] {
                    let mut m = bytes.clone();
                    m[pos] ^= mask;
                    must_not_panic(&m, &format_args!("{label}: byte {pos} ^ {mask:#x}"));
                }
            }
            // Random bursts: several bytes set to random or extreme values anywhere.
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            for round in 0..2000 {
                let mut m = bytes.clone();
                for _ in 0..1 + rng.below(4) {
                    let pos = if rng.below(4) == 0 {
                        rng.below(m.len())
                    } else {
                        rng.below(header_end)
                    };
                    m[pos] = match rng.below(3) {
                        0 => 0x00,
                        1 => 0xFF,
                        _ => rng.next() as u8,
                    };
                }
                must_not_panic(&m, &format_args!("{label}: random round {round}"));
            }
        }
    }
}
