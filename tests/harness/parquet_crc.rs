//! Parquet files with data-page CRCs, and damage inside one page, for the integrity tests.
//!
//! parquet 60's writer leaves the page header's optional `crc` field out (a TODO upstream), while
//! its reader checks the CRC wherever a file has one. Other writers (parquet-mr, Arrow C++ with
//! `write_page_checksum`) do write them. [`with_page_crcs`] turns a file written by the parquet
//! crate into such a file: it re-encodes every page header with the CRC-32 of the page's bytes
//! inserted (Thrift compact protocol, field 4), lays the pages out again and writes a footer with
//! the moved offsets. It expects what [`plain_writer_properties`] writes: no page indexes and no
//! bloom filters, so the column chunks are all that lies between the magic and the footer.

use std::ops::Range;

use bytes::Bytes;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

/// Uncompressed, plain-encoded pages without page indexes: a flipped byte changes a value unless
/// something checks the page, which is exactly what the tests need to show.
pub fn plain_writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_offset_index_disabled(true)
        .build()
}

/// The standard CRC-32 (IEEE 802.3), what Parquet page checksums use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One page as laid out in the file.
#[derive(Debug, Clone)]
pub struct PageSpan {
    /// Header and body together.
    pub whole: Range<usize>,
    /// The body only (what the CRC covers).
    pub body: Range<usize>,
    pub crc: Option<u32>,
}

/// The same file with a CRC in every page header.
pub fn with_page_crcs(file: &[u8]) -> Vec<u8> {
    let metadata = footer(file);
    let mut out = b"PAR1".to_vec();
    let mut row_groups = Vec::new();
    for row_group in metadata.row_groups() {
        let mut columns = Vec::new();
        let group_start = out.len() as i64;
        for column in row_group.columns() {
            let start = out.len() as i64;
            let dictionary_page = column.dictionary_page_offset().is_some();
            let mut page_starts = Vec::new();
            for page in pages(file, column.byte_range()) {
                let header = parse_header(&file[page.whole.start..page.body.start]);
                let crc = crc32(&file[page.body.clone()]);
                page_starts.push(out.len() as i64);
                out.extend_from_slice(&header.encode_with_crc(crc));
                out.extend_from_slice(&file[page.body.clone()]);
            }
            let size = out.len() as i64 - start;
            let builder = column
                .clone()
                .into_builder()
                .set_total_compressed_size(size)
                .set_offset_index_offset(None)
                .set_offset_index_length(None)
                .set_column_index_offset(None)
                .set_column_index_length(None);
            // With a dictionary, it is the first page and the data pages follow it.
            let builder = if dictionary_page {
                builder
                    .set_dictionary_page_offset(Some(start))
                    .set_data_page_offset(page_starts[1])
            } else {
                builder.set_data_page_offset(start)
            };
            columns.push(builder.build().expect("column chunk metadata"));
        }
        let rebuilt = row_group
            .clone()
            .into_builder()
            .set_column_metadata(columns)
            .set_file_offset(group_start)
            .build()
            .expect("row group metadata");
        row_groups.push(rebuilt);
    }
    let metadata = metadata.into_builder().set_row_groups(row_groups).build();
    ParquetMetaDataWriter::new(&mut out, &metadata)
        .finish()
        .expect("write footer");
    out
}

/// The footer of a whole file in memory.
pub fn footer(file: &[u8]) -> ParquetMetaData {
    ParquetMetaDataReader::new()
        .parse_and_finish(&Bytes::copy_from_slice(file))
        .expect("a readable footer")
}

/// Every page of the column chunk at `(start, length)`, in order.
pub fn pages(file: &[u8], (start, length): (u64, u64)) -> Vec<PageSpan> {
    let (mut pos, end) = (start as usize, (start + length) as usize);
    let mut spans = Vec::new();
    while pos < end {
        let header = parse_header(&file[pos..end]);
        let body_start = pos + header.bytes.len();
        let body_end = body_start + header.compressed_size;
        spans.push(PageSpan {
            whole: pos..body_end,
            body: body_start..body_end,
            crc: header.crc,
        });
        pos = body_end;
    }
    spans
}

/// The pages of column `name` in row group `row_group`.
pub fn column_pages(file: &[u8], row_group: usize, name: &str) -> Vec<PageSpan> {
    let metadata = footer(file);
    let column = metadata
        .row_group(row_group)
        .columns()
        .iter()
        .find(|c| c.column_path().string() == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    pages(file, column.byte_range())
}

// ---------------------------------------------------------------------------------------------
// Just enough of the Thrift compact protocol to copy a page header and insert field 4.

const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_I32: u8 = 5;

/// A page header: its bytes and the fields in it.
struct Header<'a> {
    bytes: &'a [u8],
    /// (field id, compact type, payload range within `bytes`).
    fields: Vec<(i16, u8, Range<usize>)>,
    compressed_size: usize,
    crc: Option<u32>,
}

impl Header<'_> {
    /// The header with `crc` as field 4 (replacing one already there), field deltas re-encoded.
    fn encode_with_crc(&self, crc: u32) -> Vec<u8> {
        let mut fields: Vec<(i16, u8, Vec<u8>)> = self
            .fields
            .iter()
            .filter(|(id, _, _)| *id != 4)
            .map(|(id, ty, range)| (*id, *ty, self.bytes[range.clone()].to_vec()))
            .collect();
        let mut crc_payload = Vec::new();
        write_varint(&mut crc_payload, zigzag(i64::from(crc as i32)));
        let at = fields.iter().position(|(id, _, _)| *id > 4).unwrap_or(fields.len());
        fields.insert(at, (4, T_I32, crc_payload));
        let mut out = Vec::with_capacity(self.bytes.len() + 6);
        let mut last = 0i16;
        for (id, ty, payload) in fields {
            let delta = id - last;
            if (1..=15).contains(&delta) {
                out.push(((delta as u8) << 4) | ty);
            } else {
                out.push(ty);
                write_varint(&mut out, zigzag(i64::from(id)));
            }
            out.extend_from_slice(&payload);
            last = id;
        }
        out.push(0);
        out
    }
}

fn parse_header(buf: &[u8]) -> Header<'_> {
    let mut cursor = Cursor { buf, pos: 0 };
    let mut fields = Vec::new();
    let mut last = 0i16;
    let (mut compressed_size, mut crc) = (None, None);
    loop {
        let byte = cursor.byte();
        if byte == 0 {
            break;
        }
        let ty = byte & 0x0f;
        let id = match byte >> 4 {
            0 => unzigzag(cursor.varint()) as i16,
            delta => last + i16::from(delta),
        };
        let start = cursor.pos;
        if id == 3 || id == 4 {
            let value = unzigzag(cursor.varint()) as i32;
            if id == 3 {
                compressed_size = Some(value as usize);
            } else {
                crc = Some(value as u32);
            }
        } else {
            cursor.skip(ty, false);
        }
        fields.push((id, ty, start..cursor.pos));
        last = id;
    }
    Header {
        bytes: &buf[..cursor.pos],
        fields,
        compressed_size: compressed_size.expect("a page header has compressed_page_size"),
        crc,
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.buf[self.pos];
        self.pos += 1;
        b
    }

    fn varint(&mut self) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let b = self.byte();
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }

    /// Skips one value of compact type `ty`; booleans take a byte only as list elements.
    fn skip(&mut self, ty: u8, in_list: bool) {
        match ty {
            T_BOOL_TRUE | T_BOOL_FALSE => {
                if in_list {
                    self.pos += 1;
                }
            }
            3 => self.pos += 1,
            4..=6 => {
                self.varint();
            }
            7 => self.pos += 8,
            8 => {
                let len = self.varint() as usize;
                self.pos += len;
            }
            9 | 10 => {
                let head = self.byte();
                let size = match head >> 4 {
                    15 => self.varint() as usize,
                    n => usize::from(n),
                };
                for _ in 0..size {
                    self.skip(head & 0x0f, true);
                }
            }
            11 => {
                let size = self.varint() as usize;
                if size > 0 {
                    let kinds = self.byte();
                    for _ in 0..size {
                        self.skip(kinds >> 4, true);
                        self.skip(kinds & 0x0f, true);
                    }
                }
            }
            12 => loop {
                let byte = self.byte();
                if byte == 0 {
                    break;
                }
                if byte >> 4 == 0 {
                    self.varint();
                }
                self.skip(byte & 0x0f, false);
            },
            other => panic!("unknown compact type {other}"),
        }
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
