//! Arrow IPC messages from outside, checked before arrow-ipc decodes them.
//!
//! arrow-ipc 59 trusts the messages it reads: a schema naming an integer 7 bits wide, a
//! field whose type table is missing, or a buffer that lies past its message's body makes it
//! panic (`convert.rs`'s `get_data_type`, `Buffer::slice_with_length`) instead of returning
//! an error, and compressed buffers declare a decompressed length the decoder allocates.
//! Every front door that decodes IPC a client sent (REST's bulk upload, Flight SQL's bound
//! parameters) first passes each message's metadata through [`vet_message`], which accepts
//! only what those doors need: flat columns of the plain types below, little-endian,
//! uncompressed, no dictionaries, every buffer and node inside its message and every buffer
//! aligned as the format pads it (8 bytes). What passes is
//! then decoded by arrow-ipc with its full validation (offsets, UTF-8, lengths).
//!
//! Found by fuzzing (`fuzz/`, targets `rest_bulk_arrow` and `import_parquet`).

use arrow::ipc::{self, Endianness, MessageHeader, Type};

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcRefusal {
    /// Buffers compressed with LZ4 or ZSTD: their decompressed length is the sender's to choose.
    Compressed,
    /// Well formed, but not something a front door accepts (a nested type, a dictionary…).
    Unsupported(String),
    /// Not a valid message: a missing part, a negative length, a buffer past the body.
    Malformed(String),
    /// More rows in a stream than the caller accepts (the limit).
    TooManyRows(u64),
}

impl std::fmt::Display for IpcRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Compressed => {
                f.write_str("compressed Arrow IPC buffers (LZ4, ZSTD) are not accepted: send the stream uncompressed")
            }
            Self::Unsupported(reason) | Self::Malformed(reason) => f.write_str(reason),
            Self::TooManyRows(limit) => write!(f, "more than {limit} rows in one Arrow IPC stream"),
        }
    }
}

/// Checks every message of an Arrow IPC stream (the streaming format: each message an optional
/// continuation marker, a length, the metadata, the body; a zero length ends it) with
/// [`vet_message`], and that the batches hold at most `max_rows` rows in all, which it returns.
/// Framing that a reader could not walk is refused here too, so no message reaches the decoder
/// unchecked.
pub fn vet_stream(bytes: &[u8], max_rows: u64) -> Result<u64, IpcRefusal> {
    let malformed = |at: usize, reason: &str| IpcRefusal::Malformed(format!("Arrow IPC stream, byte {at}: {reason}"));
    let word =
        |at: usize| -> Option<i32> { Some(i32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?)) };
    let (mut offset, mut rows) = (0usize, 0u64);
    let mut vetter = IpcVetter::default();
    while offset < bytes.len() {
        let start = offset;
        let mut length = word(offset).ok_or_else(|| malformed(start, "a message length is cut short"))?;
        offset += 4;
        if length == -1 {
            // The continuation marker before each message's length.
            length = word(offset).ok_or_else(|| malformed(start, "a message length is cut short"))?;
            offset += 4;
        }
        let length = usize::try_from(length).map_err(|_| malformed(start, "a negative message length"))?;
        if length == 0 {
            break; // end of stream
        }
        let end = offset
            .checked_add(length)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| malformed(start, "a message runs past the end"))?;
        let body = bytes.len() - end;
        let message =
            ipc::root_as_message(&bytes[offset..end]).map_err(|e| malformed(start, &format!("not a message ({e})")))?;
        if let Vetted::Batch { rows: more } = vetter.check(&bytes[offset..end], body)? {
            rows = rows.saturating_add(more);
            if rows > max_rows {
                return Err(IpcRefusal::TooManyRows(max_rows));
            }
        }
        // `vet_message` checked that the declared body fits in what follows.
        offset = end + message.bodyLength() as usize;
    }
    Ok(rows)
}

/// What a message that passed holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vetted {
    /// A schema whose every field is a flat column of an accepted type.
    Schema,
    /// A record batch.
    Batch {
        /// Its rows.
        rows: u64,
    },
}

/// Checks one IPC message on its own (a schema, or a batch as if no schema came before:
/// refused); see [`IpcVetter`] for a stream of them.
pub fn vet_message(metadata: &[u8], body: usize) -> Result<Vetted, IpcRefusal> {
    IpcVetter::default().check(metadata, body)
}

/// Checks the messages of one stream in order: a record batch is checked against the
/// buffers its stream's schema implies.
#[derive(Debug, Default, Clone)]
pub struct IpcVetter {
    /// For each column of the schema (one field node in a batch), its buffers in order.
    layout: Option<Vec<Vec<Buffer>>>,
}

/// What one buffer of a column holds, as arrow-ipc reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffer {
    /// The validity bitmap: one bit a value where the column has nulls (else ignored).
    Validity,
    /// A boolean column's values: one bit a value.
    Bits,
    /// Fixed-width values of this many bytes.
    Fixed(usize),
    /// Offsets of this many bytes, one more than the values (none for an empty column).
    Offsets(usize),
    /// The bytes the offsets point into: any length.
    Data,
}

impl Buffer {
    /// The size its length must be a multiple of.
    fn unit(self) -> usize {
        match self {
            Self::Fixed(width) | Self::Offsets(width) => width,
            Self::Validity | Self::Bits | Self::Data => 1,
        }
    }

    /// The fewest bytes it needs for a column of `length` values with `nulls` nulls: arrow
    /// builds bitmaps over what it is given and panics on one too short.
    fn needs(self, length: usize, nulls: usize) -> usize {
        match self {
            Self::Validity if nulls == 0 => 0,
            Self::Validity | Self::Bits => length.div_ceil(8),
            Self::Fixed(width) => length.saturating_mul(width),
            Self::Offsets(_) if length == 0 => 0,
            Self::Offsets(width) => length.saturating_add(1).saturating_mul(width),
            Self::Data => 0,
        }
    }
}

impl IpcVetter {
    /// Checks one IPC message: `metadata` is its flatbuffer (the bytes after the length prefix
    /// in a stream, `FlightData::data_header` in Flight) and `body` the length of the body
    /// that follows it (which must be at least what the message declares).
    pub fn check(&mut self, metadata: &[u8], body: usize) -> Result<Vetted, IpcRefusal> {
        let malformed = |reason: &str| IpcRefusal::Malformed(format!("Arrow IPC message: {reason}"));
        let message = ipc::root_as_message(metadata).map_err(|e| malformed(&format!("not a message ({e})")))?;
        let declared = usize::try_from(message.bodyLength()).map_err(|_| malformed("negative body length"))?;
        if declared > body {
            return Err(malformed(&format!(
                "declares a body of {declared} bytes, {body} follow"
            )));
        }
        match message.header_type() {
            MessageHeader::Schema => {
                let schema = message
                    .header_as_schema()
                    .ok_or_else(|| malformed("schema header missing"))?;
                if schema.endianness() != Endianness::Little {
                    return Err(IpcRefusal::Unsupported(
                        "big-endian Arrow IPC is not accepted: send little-endian".into(),
                    ));
                }
                let fields = schema.fields().ok_or_else(|| malformed("schema without fields"))?;
                let mut layout = Vec::new();
                for field in fields {
                    layout.push(vet_field(field)?);
                }
                self.layout = Some(layout);
                Ok(Vetted::Schema)
            }
            MessageHeader::RecordBatch => {
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| malformed("record batch header missing"))?;
                if batch.compression().is_some() {
                    return Err(IpcRefusal::Compressed);
                }
                let rows = u64::try_from(batch.length())
                    .ok()
                    .filter(|rows| *rows <= i32::MAX as u64)
                    .ok_or_else(|| malformed(&format!("a batch of {} rows", batch.length())))?;
                if batch.variadicBufferCounts().is_some_and(|counts| !counts.is_empty()) {
                    return Err(IpcRefusal::Unsupported(
                        "Arrow IPC view types (Utf8View, BinaryView) are not accepted: send Utf8".into(),
                    ));
                }
                let layout = self
                    .layout
                    .as_ref()
                    .ok_or_else(|| malformed("a record batch before any schema"))?;
                let nodes = batch
                    .nodes()
                    .ok_or_else(|| malformed("record batch without field nodes"))?;
                if nodes.len() != layout.len() {
                    return Err(malformed(&format!(
                        "a record batch of {} columns, where its schema has {}",
                        nodes.len(),
                        layout.len()
                    )));
                }
                let mut roles = Vec::new();
                for (node, column) in nodes.iter().zip(layout) {
                    let (length, nulls) = (node.length(), node.null_count());
                    if length < 0 || nulls < 0 || nulls > length || length as u64 > rows {
                        return Err(malformed(&format!(
                            "a column of {length} values ({nulls} null) in a batch of {rows} rows"
                        )));
                    }
                    // Both fit in usize: 0 <= nulls <= length <= rows <= i32::MAX.
                    let (length, nulls) = (length as usize, nulls as usize);
                    roles.extend(column.iter().map(|role| (*role, role.needs(length, nulls))));
                }
                let buffers = batch
                    .buffers()
                    .ok_or_else(|| malformed("record batch without buffers"))?;
                if buffers.len() != roles.len() {
                    return Err(malformed(&format!(
                        "a record batch of {} buffers, where its schema has {}",
                        buffers.len(),
                        roles.len()
                    )));
                }
                for (buffer, (role, needs)) in buffers.iter().zip(roles) {
                    // arrow-data's validation panics on a buffer whose length is not a whole
                    // number of its values, and arrow-buffer on a bitmap shorter than its
                    // column.
                    let width = role.unit();
                    if buffer.length() % width as i64 != 0 {
                        return Err(malformed(&format!(
                            "a buffer of {} bytes for values of {width}",
                            buffer.length()
                        )));
                    }
                    if buffer.length() < needs as i64 {
                        return Err(malformed(&format!(
                            "a {role:?} buffer of {} bytes, where its column needs {needs}",
                            buffer.length()
                        )));
                    }
                    let end = usize::try_from(buffer.offset())
                        .ok()
                        .zip(usize::try_from(buffer.length()).ok())
                        .and_then(|(offset, length)| offset.checked_add(length));
                    if end.is_none_or(|end| end > declared) {
                        return Err(malformed(&format!(
                            "a buffer at {} of {} bytes in a body of {declared}",
                            buffer.offset(),
                            buffer.length()
                        )));
                    }
                    // The format pads every buffer to 8 bytes; arrow-data's validation panics on
                    // an offsets buffer that is not aligned for its type.
                    if buffer.offset() % 8 != 0 {
                        return Err(malformed(&format!(
                            "a buffer at {}, not a multiple of 8 bytes into the body",
                            buffer.offset()
                        )));
                    }
                }
                Ok(Vetted::Batch { rows })
            }
            MessageHeader::DictionaryBatch => Err(IpcRefusal::Unsupported(
                "dictionary-encoded Arrow IPC columns are not accepted: send plain columns".into(),
            )),
            other => Err(IpcRefusal::Unsupported(format!(
                "Arrow IPC {other:?} messages are not accepted: send a schema and record batches"
            ))),
        }
    }
}

/// A field is accepted if it is a flat column of a plain type whose parameters arrow-ipc
/// converts without panicking; returns its buffers.
fn vet_field(field: ipc::Field<'_>) -> Result<Vec<Buffer>, IpcRefusal> {
    let name = field.name().unwrap_or_default();
    let unsupported = |what: &str| {
        IpcRefusal::Unsupported(format!(
            "Arrow IPC column '{name}': {what} is not accepted (flat columns of integers, floats, \
             booleans, strings, binary, dates, times, timestamps, durations or decimals)"
        ))
    };
    if field.dictionary().is_some() {
        return Err(unsupported("a dictionary-encoded column"));
    }
    if field.children().is_some_and(|children| !children.is_empty()) {
        return Err(unsupported("a nested column"));
    }
    let missing = || IpcRefusal::Malformed(format!("Arrow IPC column '{name}': its type's parameters are missing"));
    // The validity bitmap, then the values (as arrow-ipc reads each type's buffers).
    let values = |width: Option<usize>| width.map(|width| vec![Buffer::Validity, Buffer::Fixed(width)]);
    let layout = match field.type_type() {
        Type::Null => Some(Vec::new()),
        Type::Bool => Some(vec![Buffer::Validity, Buffer::Bits]),
        Type::Utf8 | Type::Binary => Some(vec![Buffer::Validity, Buffer::Offsets(4), Buffer::Data]),
        Type::LargeUtf8 | Type::LargeBinary => Some(vec![Buffer::Validity, Buffer::Offsets(8), Buffer::Data]),
        Type::Int => {
            let int = field.type_as_int().ok_or_else(missing)?;
            values(matches!(int.bitWidth(), 8 | 16 | 32 | 64).then(|| int.bitWidth() as usize / 8))
        }
        Type::FloatingPoint => {
            let float = field.type_as_floating_point().ok_or_else(missing)?;
            values(match float.precision() {
                ipc::Precision::HALF => Some(2),
                ipc::Precision::SINGLE => Some(4),
                ipc::Precision::DOUBLE => Some(8),
                _ => None,
            })
        }
        Type::Date => {
            let date = field.type_as_date().ok_or_else(missing)?;
            values(match date.unit() {
                ipc::DateUnit::DAY => Some(4),
                ipc::DateUnit::MILLISECOND => Some(8),
                _ => None,
            })
        }
        Type::Time => {
            let time = field.type_as_time().ok_or_else(missing)?;
            values(match (time.bitWidth(), time.unit()) {
                (32, ipc::TimeUnit::SECOND | ipc::TimeUnit::MILLISECOND) => Some(4),
                (64, ipc::TimeUnit::MICROSECOND | ipc::TimeUnit::NANOSECOND) => Some(8),
                _ => None,
            })
        }
        Type::Timestamp => values(time_unit(field.type_as_timestamp().ok_or_else(missing)?.unit()).then_some(8)),
        Type::Duration => values(time_unit(field.type_as_duration().ok_or_else(missing)?.unit()).then_some(8)),
        Type::Decimal => {
            let decimal = field.type_as_decimal().ok_or_else(missing)?;
            let fine = matches!(decimal.bitWidth(), 32 | 64 | 128 | 256)
                && u8::try_from(decimal.precision()).is_ok()
                && i8::try_from(decimal.scale()).is_ok();
            values(fine.then(|| decimal.bitWidth() as usize / 8))
        }
        other => return Err(unsupported(&format!("type {other:?}"))),
    };
    layout.ok_or_else(|| unsupported(&format!("this {:?} type's parameters", field.type_type())))
}

fn time_unit(unit: ipc::TimeUnit) -> bool {
    matches!(
        unit,
        ipc::TimeUnit::SECOND | ipc::TimeUnit::MILLISECOND | ipc::TimeUnit::MICROSECOND | ipc::TimeUnit::NANOSECOND
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Int32Type;
    use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
    use flatbuffers::FlatBufferBuilder;
    use std::sync::Arc;

    /// A stream of `batch` twice.
    fn stream(batch: &RecordBatch, options: IpcWriteOptions) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new_with_options(&mut bytes, &batch.schema(), options).unwrap();
        writer.write(batch).unwrap();
        writer.write(batch).unwrap();
        writer.finish().unwrap();
        bytes
    }

    fn sightings(rows: usize) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("observed", Arc::new(StringArray::from(vec!["aa:bb"; rows])) as ArrayRef),
            ("duration_s", Arc::new(Int64Array::from(vec![60; rows])) as ArrayRef),
        ])
        .unwrap()
    }

    /// A schema message of one field `rssi`, built by hand: `int` is its Int type's
    /// (bit width, signed), or no type table at all.
    fn schema_with_int(int: Option<(i32, bool)>) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let int = int.map(|(width, signed)| {
            let mut b = ipc::IntBuilder::new(&mut fbb);
            b.add_bitWidth(width);
            b.add_is_signed(signed);
            b.finish().as_union_value()
        });
        let name = fbb.create_string("rssi");
        let mut field = ipc::FieldBuilder::new(&mut fbb);
        field.add_name(name);
        field.add_nullable(true);
        field.add_type_type(Type::Int);
        if let Some(int) = int {
            field.add_type_(int);
        }
        let field = field.finish();
        let fields = fbb.create_vector(&[field]);
        let mut schema = ipc::SchemaBuilder::new(&mut fbb);
        schema.add_fields(fields);
        let schema = schema.finish();
        let mut message = ipc::MessageBuilder::new(&mut fbb);
        message.add_version(ipc::MetadataVersion::V5);
        message.add_header_type(MessageHeader::Schema);
        message.add_header(schema.as_union_value());
        let message = message.finish();
        fbb.finish(message, None);
        fbb.finished_data().to_vec()
    }

    #[test]
    fn what_the_writer_makes_passes_and_its_rows_are_counted() {
        let bytes = stream(&sightings(100), IpcWriteOptions::default());
        assert_eq!(vet_stream(&bytes, 200), Ok(200));
        assert_eq!(vet_stream(&bytes, 199), Err(IpcRefusal::TooManyRows(199)));
        // Without the end-of-stream marker, as a stream cut at a message boundary reads.
        assert_eq!(vet_stream(&bytes[..bytes.len() - 8], 200), Ok(200));
        assert_eq!(vet_stream(&[], 200), Ok(0));
    }

    #[test]
    fn a_schema_arrow_ipc_would_panic_on_is_refused() {
        // The independent check: arrow-ipc's conversion panics on exactly these messages.
        let converts = |bytes: &[u8]| {
            let bytes = bytes.to_vec();
            std::panic::catch_unwind(move || {
                let message = ipc::root_as_message(&bytes).unwrap();
                ipc::convert::fb_to_schema(message.header_as_schema().unwrap())
            })
            .is_ok()
        };
        assert!(converts(&schema_with_int(Some((32, true)))));
        assert_eq!(vet_message(&schema_with_int(Some((32, true))), 0), Ok(Vetted::Schema));
        for width in [0, 7, 33, 128, -8] {
            let bytes = schema_with_int(Some((width, true)));
            assert!(!converts(&bytes), "width {width}");
            let refusal = vet_message(&bytes, 0).unwrap_err();
            assert!(matches!(refusal, IpcRefusal::Unsupported(_)), "{refusal:?}");
            assert!(refusal.to_string().contains("'rssi'"), "{refusal}");
        }
        let bytes = schema_with_int(None);
        assert!(!converts(&bytes));
        assert!(matches!(vet_message(&bytes, 0), Err(IpcRefusal::Malformed(_))));
    }

    #[test]
    fn compressed_dictionary_and_damaged_streams_are_refused() {
        for compression in [ipc::CompressionType::LZ4_FRAME, ipc::CompressionType::ZSTD] {
            let options = IpcWriteOptions::default()
                .try_with_compression(Some(compression))
                .unwrap();
            assert_eq!(
                vet_stream(&stream(&sightings(10), options), 100),
                Err(IpcRefusal::Compressed)
            );
        }
        let keys = DictionaryArray::<Int32Type>::from_iter(["a", "b", "a"]);
        let batch = RecordBatch::try_from_iter([("observed", Arc::new(keys) as ArrayRef)]).unwrap();
        let refusal = vet_stream(&stream(&batch, IpcWriteOptions::default()), 100).unwrap_err();
        assert!(refusal.to_string().contains("dictionary-encoded"), "{refusal}");
        // Every truncation of a valid stream is either whole messages or refused as malformed.
        let whole = stream(&sightings(10), IpcWriteOptions::default());
        for cut in 0..whole.len() {
            match vet_stream(&whole[..cut], 100) {
                Ok(rows) => assert!(rows <= 20),
                Err(refusal) => assert!(matches!(refusal, IpcRefusal::Malformed(_)), "cut {cut}: {refusal:?}"),
            }
        }
        for garbage in [&b"not arrow"[..], &[0xff; 64], &[0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0]] {
            assert!(matches!(vet_stream(garbage, 100), Err(IpcRefusal::Malformed(_))));
        }
    }

    #[test]
    fn each_buffer_is_as_long_as_its_column_needs() {
        use Buffer::*;
        // 10 values with nulls: a bitmap of 2 bytes; without nulls arrow-ipc ignores it.
        assert_eq!(Validity.needs(10, 1), 2);
        assert_eq!(Validity.needs(10, 0), 0);
        assert_eq!(Bits.needs(9, 0), 2);
        assert_eq!(Fixed(8).needs(10, 3), 80);
        // Offsets: one more than the values, none at all for an empty column.
        assert_eq!(Offsets(4).needs(10, 0), 44);
        assert_eq!(Offsets(4).needs(0, 0), 0);
        assert_eq!(Data.needs(10, 0), 0);
        // What the writer makes, with nulls in every kind of column, passes.
        let batch = RecordBatch::try_from_iter([
            (
                "s",
                Arc::new(arrow::array::StringArray::from(vec![Some("a"), None, Some("bc")])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(arrow::array::BooleanArray::from(vec![Some(true), None, Some(false)])) as ArrayRef,
            ),
            (
                "i",
                Arc::new(arrow::array::Int64Array::from(vec![None, Some(2), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        // (`stream` writes the batch twice.)
        assert_eq!(vet_stream(&stream(&batch, IpcWriteOptions::default()), 10), Ok(6));
    }
}
