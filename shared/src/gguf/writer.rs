//! Writing GGUF files: an edited model (METHOD §5, weight orthogonalization) or a llama.cpp
//! control vector. The writer lays a file out exactly as [`GgufFile::parse`](super::GgufFile)
//! reads it: header, metadata, tensor table, then tensor data at aligned offsets.

use std::borrow::Cow;
use std::io::{self, Write};

use super::error::GgufError;
use super::quant::GgmlType;
use super::reader::{MetadataValue, TensorInfo};

const ALIGNMENT_KEY: &str = "general.alignment";
const DEFAULT_ALIGNMENT: u64 = 32;

impl MetadataValue {
    /// The GGUF value-type id.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            MetadataValue::U8(_) => 0,
            MetadataValue::I8(_) => 1,
            MetadataValue::U16(_) => 2,
            MetadataValue::I16(_) => 3,
            MetadataValue::U32(_) => 4,
            MetadataValue::I32(_) => 5,
            MetadataValue::F32(_) => 6,
            MetadataValue::Bool(_) => 7,
            MetadataValue::String(_) => 8,
            MetadataValue::Array(_) => 9,
            MetadataValue::U64(_) => 10,
            MetadataValue::I64(_) => 11,
            MetadataValue::F64(_) => 12,
        }
    }

    pub(crate) fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            MetadataValue::U8(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::I8(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::U16(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::I16(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::U32(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::I32(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::F32(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::Bool(x) => w.write_all(&[u8::from(*x)]),
            MetadataValue::String(x) => write_str(w, x),
            MetadataValue::U64(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::I64(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::F64(x) => w.write_all(&x.to_le_bytes()),
            MetadataValue::Array(items) => {
                // The reader does not keep an empty array's element type; any id is valid there.
                let elem = items.first().map_or(0, MetadataValue::type_id);
                w.write_all(&elem.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|item| item.write(w))
            }
        }
    }
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// A GGUF v3 file being assembled. Tensor data may be borrowed (e.g. copied unchanged from a
/// memory-mapped source file) or owned (edited tensors).
#[derive(Debug, Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<(TensorInfo, Cow<'a, [u8]>)>,
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter::default()
    }

    /// Sets a metadata key, replacing an earlier value of the same key in place.
    pub fn set(&mut self, key: &str, value: MetadataValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
    }

    /// Adds a tensor. `dims` are in GGUF order (`dims[0]` is the row length) and `data` must be
    /// exactly the size `ty` gives those dims.
    ///
    /// # Errors
    ///
    /// [`GgufError::DuplicateTensor`] for a name already added, [`GgufError::BadShape`] when
    /// the data size does not match, and the errors of [`TensorInfo::n_bytes`].
    pub fn tensor(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), GgufError> {
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(GgufError::DuplicateTensor(name.to_owned()));
        }
        let info = TensorInfo {
            name: name.to_owned(),
            dims,
            ggml_type: ty,
            offset: 0,
        };
        let data = data.into();
        if info.n_bytes()? != data.len() as u64 {
            return Err(GgufError::BadShape {
                tensor: info.name,
                dims: info.dims,
                reason: "data size does not match the shape and type",
            });
        }
        self.tensors.push((info, data));
        Ok(())
    }

    /// An `f32` tensor from row-major values of the row-major `shape` (reversed into GGUF order).
    ///
    /// # Errors
    ///
    /// As [`GgufWriter::tensor`].
    pub fn tensor_f32(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<(), GgufError> {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, bytes)
    }

    /// Writes the whole file.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let alignment = self
            .metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut written = 0u64;
        let mut out = Counting {
            inner: w,
            written: &mut written,
        };

        out.write_all(b"GGUF")?;
        out.write_all(&3u32.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_str(&mut out, key)?;
            out.write_all(&value.type_id().to_le_bytes())?;
            value.write(&mut out)?;
        }
        let mut offset = 0u64;
        for (info, data) in &self.tensors {
            write_str(&mut out, &info.name)?;
            out.write_all(&(info.dims.len() as u32).to_le_bytes())?;
            for d in &info.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&info.ggml_type.id().to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
            offset = (offset + data.len() as u64).next_multiple_of(alignment);
        }
        for (_, data) in &self.tensors {
            let pad = out.written().next_multiple_of(alignment) - out.written();
            out.write_all(&vec![0; pad as usize])?;
            out.write_all(data)?;
        }
        Ok(())
    }

    /// The whole file in memory (for the browser, which has no file system).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut bytes);
        bytes
    }
}

/// Counts bytes so data can be padded to the alignment without a seekable writer.
struct Counting<'w, W> {
    inner: &'w mut W,
    written: &'w mut u64,
}

impl<W> Counting<'_, W> {
    fn written(&self) -> u64 {
        *self.written
    }
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::GgufFile;
    use super::*;

    #[test]
    fn a_written_file_parses_back_to_the_same_metadata_and_tensors() {
        let mut w = GgufWriter::new();
        let metadata = vec![
            (
                "general.architecture",
                MetadataValue::String("llama".into()),
            ),
            ("a.u8", MetadataValue::U8(7)),
            ("a.i8", MetadataValue::I8(-7)),
            ("a.u16", MetadataValue::U16(700)),
            ("a.i16", MetadataValue::I16(-700)),
            ("a.u32", MetadataValue::U32(70_000)),
            ("a.i32", MetadataValue::I32(-70_000)),
            ("a.f32", MetadataValue::F32(1.5)),
            ("a.bool", MetadataValue::Bool(true)),
            ("a.u64", MetadataValue::U64(1 << 40)),
            ("a.i64", MetadataValue::I64(-(1 << 40))),
            ("a.f64", MetadataValue::F64(-2.25)),
            (
                "a.strings",
                MetadataValue::Array(vec![
                    MetadataValue::String("x".into()),
                    MetadataValue::String("yz".into()),
                ]),
            ),
            ("general.alignment", MetadataValue::U32(64)),
        ];
        for (k, v) in &metadata {
            w.set(k, v.clone());
        }
        w.set("a.u8", MetadataValue::U8(8));
        let q8: Vec<u8> = (0..34u8).collect();
        w.tensor("q", vec![32], GgmlType::Q8_0, q8.as_slice())
            .unwrap();
        w.tensor_f32("m", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
        let bytes = w.to_bytes();

        let file = GgufFile::parse(&bytes).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.alignment, 64);
        assert_eq!(file.metadata.len(), metadata.len());
        assert_eq!(file.get("a.u8"), Some(&MetadataValue::U8(8)));
        for (k, v) in metadata.iter().filter(|(k, _)| *k != "a.u8") {
            assert_eq!(file.get(k), Some(v), "{k}");
        }
        let q = file.tensor("q").unwrap();
        assert_eq!(file.tensor_bytes(&bytes, q).unwrap(), q8.as_slice());
        assert_eq!(file.tensor("m").unwrap().dims, vec![3, 2]);
        assert_eq!(
            file.tensor_f32(&bytes, "m").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn wrong_sizes_and_duplicate_names_are_refused() {
        let mut w = GgufWriter::new();
        assert!(matches!(
            w.tensor("t", vec![32], GgmlType::F32, vec![0u8; 4]),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            w.tensor("t", vec![33], GgmlType::Q8_0, vec![0u8; 34]),
            Err(GgufError::MisalignedRowLength { .. })
        ));
        w.tensor_f32("t", &[1], &[0.0]).unwrap();
        assert!(matches!(
            w.tensor_f32("t", &[1], &[0.0]),
            Err(GgufError::DuplicateTensor(_))
        ));
    }
}
