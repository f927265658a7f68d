//! Parquet over the object store: reads through ranged GETs (only the footer, the projected columns
//! and the row groups asked for travel), writes through an all-or-nothing [`ObjectSink`].

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use parquet::basic::{Compression, Encoding};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::lake::Zone;
use crate::storage::{ObjectInfo, ObjectSink, ObjectStore, read_verified};

const MAGIC: &[u8; 4] = b"PAR1";
/// Footers of TLC files are a few KiB; one 64 KiB GET almost always fetches the whole of it.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// An [`AsyncFileReader`] that fetches byte ranges from the store.
pub struct StoreFileReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
}

impl StoreFileReader {
    pub fn new(store: Arc<dyn ObjectStore>, key: impl Into<String>, size: u64) -> Self {
        StoreFileReader {
            store,
            key: key.into(),
            size,
        }
    }
}

impl AsyncFileReader for StoreFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.key, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    /// The column chunks of a row group lie side by side: ranges less than [`COALESCE_GAP`] apart
    /// travel in one GET (on S3, one request per row group instead of one per column).
    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let mut fetched: Vec<(Range<u64>, Bytes)> = Vec::new();
            for span in coalesce(&ranges, COALESCE_GAP) {
                let bytes = self
                    .store
                    .get_range(&self.key, span.clone())
                    .await
                    .map_err(|e| ParquetError::External(Box::new(e)))?;
                fetched.push((span, bytes));
            }
            ranges
                .iter()
                .map(|range| {
                    if range.start >= range.end {
                        return Ok(Bytes::new());
                    }
                    let (span, bytes) = fetched
                        .iter()
                        .find(|(span, _)| span.start <= range.start && range.end <= span.end)
                        .ok_or_else(|| ParquetError::General(format!("range {range:?} was not fetched")))?;
                    let from = (range.start - span.start) as usize;
                    let to = (range.end - span.start) as usize;
                    if to > bytes.len() {
                        return Err(ParquetError::EOF(format!("{range:?} lies past the end of the object")));
                    }
                    Ok(bytes.slice(from..to))
                })
                .collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Ranges closer than this are fetched in one GET: reading a few hundred KiB too many costs less
/// than another request's latency on S3.
const COALESCE_GAP: u64 = 1 << 20;

/// The spans covering `ranges`, merging those less than `gap` apart, in order.
fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut spans: Vec<Range<u64>> = Vec::new();
    for range in sorted {
        match spans.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(gap) => last.end = last.end.max(range.end),
            _ => spans.push(range),
        }
    }
    spans
}

/// Checks the magic bytes at both ends and reads the footer, telling `NotParquet` from `TruncatedParquet`
/// (for an object of our own zones either is an `IntegrityError`: we wrote it whole).
pub async fn read_metadata(store: &Arc<dyn ObjectStore>, key: &str) -> Result<(u64, Arc<ParquetMetaData>)> {
    match read_footer(store, key).await {
        Err(err @ (Error::NotParquet { .. } | Error::TruncatedParquet { .. })) if in_own_zone(key) => {
            Err(Error::IntegrityError {
                key: key.into(),
                detail: err.to_string(),
            })
        }
        other => other,
    }
}

async fn read_footer(store: &Arc<dyn ObjectStore>, key: &str) -> Result<(u64, Arc<ParquetMetaData>)> {
    let size = store
        .size(key)
        .await?
        .ok_or_else(|| Error::ObjectNotFound { key: key.to_string() })?;
    if size < 4 {
        return Err(Error::NotParquet {
            key: key.into(),
            detail: format!("only {size} bytes"),
        });
    }
    let head = store.get_range(key, 0..4).await?;
    if head.as_ref() != MAGIC {
        return Err(Error::NotParquet {
            key: key.into(),
            detail: format!("starts with {:02x?}, not PAR1", head.as_ref()),
        });
    }
    let truncated = |detail: String| Error::TruncatedParquet {
        key: key.into(),
        detail,
    };
    if size < 12 {
        return Err(truncated(format!("only {size} bytes, too short for a footer")));
    }
    let tail = store.get_range(key, size - 4..size).await?;
    if tail.as_ref() != MAGIC {
        return Err(truncated("no PAR1 at the end: the file was cut off".into()));
    }
    let mut reader = StoreFileReader::new(store.clone(), key, size);
    let metadata = reader.get_metadata(None).await.map_err(|e| match e {
        ParquetError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => truncated(format!("unreadable footer: {other}")),
        },
        other => truncated(format!("unreadable footer: {other}")),
    })?;
    Ok((size, metadata))
}

/// A Parquet object whose footer has been read and checked: its schema is known, and any of its
/// columns can be streamed without reading the footer again.
pub struct ParquetObject {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
    metadata: ArrowReaderMetadata,
}

impl ParquetObject {
    pub async fn open(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Self> {
        let (size, metadata) = read_metadata(store, key).await?;
        let metadata =
            ArrowReaderMetadata::try_new(metadata, ArrowReaderOptions::new()).map_err(|e| damaged(key, e))?;
        Ok(ParquetObject {
            store: store.clone(),
            key: key.to_string(),
            size,
            metadata,
        })
    }

    /// The Arrow schema of every column.
    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    /// Streams the named columns (all when `columns` is `None`) in batches of `batch_rows` rows: the
    /// batch size bounds what a stage holds decoded, and each stage chooses its own by measurement.
    pub fn stream(
        self,
        columns: Option<&[&str]>,
        batch_rows: usize,
    ) -> Result<(SchemaRef, ParquetRecordBatchStream<StoreFileReader>)> {
        let ParquetObject {
            store,
            key,
            size,
            metadata,
        } = self;
        let reader = StoreFileReader::new(store, &key, size);
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
        let builder = match columns {
            None => builder,
            Some(names) => {
                let descr = builder.parquet_schema();
                let indices: Vec<usize> = descr
                    .root_schema()
                    .get_fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| names.contains(&f.name()))
                    .map(|(i, _)| i)
                    .collect();
                let mask = parquet::arrow::ProjectionMask::roots(descr, indices);
                builder.with_projection(mask)
            }
        };
        let stream = builder
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| damaged(&key, e))?;
        Ok((stream.schema().clone(), stream))
    }
}

/// Opens a Parquet object for streaming reads of the named columns (all when `columns` is `None`),
/// `batch_rows` rows at a time.
pub async fn open_stream(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    columns: Option<&[&str]>,
    batch_rows: usize,
) -> Result<(SchemaRef, ParquetRecordBatchStream<StoreFileReader>)> {
    ParquetObject::open(store, key).await?.stream(columns, batch_rows)
}

/// Batches a stage may have decoded ahead of the one it works on: enough to keep the decoder busy
/// while the stage encodes, little enough memory.
const READ_AHEAD_BATCHES: usize = 2;

type Decoded = Result<(usize, RecordBatch)>;

/// Parquet batches decoded on a task of their own, up to [`READ_AHEAD_BATCHES`] ahead of the reader:
/// the next row group decompresses and decodes on one core while the stage filters, transforms and
/// encodes this one on the other. Each batch comes with the index of the object it is from.
/// Dropping it stops the decoder.
pub struct ReadAhead {
    what: String,
    batches: tokio::sync::mpsc::Receiver<Decoded>,
    decoder: tokio::task::JoinHandle<()>,
    ended: bool,
}

impl ReadAhead {
    /// The batches of one opened stream (object index 0).
    pub fn stream(key: &str, stream: ParquetRecordBatchStream<StoreFileReader>) -> Self {
        let key = key.to_string();
        Self::start(key.clone(), move |sender| async move {
            decode_into(&sender, 0, &key, stream).await;
        })
    }

    /// The batches of several whole objects of our own zones, each read in one GET that also checks
    /// it against the size and checksum its manifest recorded ([`read_verified`]): every object is read
    /// once, and no row of one that fails the check is decoded. For objects small enough to hold
    /// (a day of curated trips). Batches of up to `batch_rows` rows.
    pub fn verified_objects(store: Arc<dyn ObjectStore>, objects: Vec<ObjectInfo>, batch_rows: usize) -> Self {
        let what = objects.first().map(|o| o.key.clone()).unwrap_or_default();
        Self::start(what, move |sender| async move {
            for (index, object) in objects.iter().enumerate() {
                let decoded = match read_verified(store.as_ref(), object).await {
                    Ok(bytes) => ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .and_then(|builder| builder.with_batch_size(batch_rows).build())
                        .map_err(|e| decode_error(&object.key, e)),
                    Err(err) => Err(err),
                };
                let batches = match decoded {
                    Ok(batches) => batches,
                    Err(err) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                };
                for batch in batches {
                    let item = batch.map(|b| (index, b)).map_err(|e| damaged(&object.key, e));
                    let failed = item.is_err();
                    if sender.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        })
    }

    fn start<F, Fut>(what: String, decode: F) -> Self
    where
        F: FnOnce(tokio::sync::mpsc::Sender<Decoded>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (sender, batches) = tokio::sync::mpsc::channel(READ_AHEAD_BATCHES);
        ReadAhead {
            what,
            batches,
            decoder: tokio::spawn(decode(sender)),
            ended: false,
        }
    }

    /// The next batch and the index of its object, `None` after the last.
    pub async fn next_batch(&mut self) -> Result<Option<(usize, RecordBatch)>> {
        if self.ended {
            return Ok(None);
        }
        if let Some(item) = self.batches.recv().await {
            return item.map(Some);
        }
        // The decoder ended: after the last batch, or by a panic, which must not pass for an end.
        self.ended = true;
        match (&mut self.decoder).await {
            Ok(()) => Ok(None),
            Err(err) => Err(damaged(&self.what, format!("the decoder stopped: {err}"))),
        }
    }
}

/// Sends every batch of `stream`; false when it stopped early (an error, or the reader went away).
async fn decode_into(
    sender: &tokio::sync::mpsc::Sender<Decoded>,
    index: usize,
    key: &str,
    mut stream: ParquetRecordBatchStream<StoreFileReader>,
) -> bool {
    loop {
        match stream.try_next().await {
            Ok(Some(batch)) => {
                if sender.send(Ok((index, batch))).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(err) => {
                let _ = sender.send(Err(decode_error(key, err))).await;
                return false;
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.decoder.abort();
    }
}

/// Whether `key` lies in one of the zones the pipeline itself writes (clean, quarantine, curated,
/// reports). Damage there is ours to answer for (`IntegrityError`); damage in `landing/` or `raw/`
/// (a byte-exact copy of the source) came with the source (`CorruptSource`).
pub fn in_own_zone(key: &str) -> bool {
    use crate::storage::layout::{CLEAN, CURATED, QUARANTINE, REPORTS};
    [CLEAN, QUARANTINE, CURATED, REPORTS]
        .iter()
        .any(|zone| key.starts_with(zone))
}

/// The error for a Parquet object whose footer was read but whose pages do not decode (a data-page
/// CRC mismatch, a page that does not decompress, a header that makes no sense).
pub fn damaged(key: &str, detail: impl std::fmt::Display) -> Error {
    if in_own_zone(key) {
        Error::IntegrityError {
            key: key.into(),
            detail: format!("a page does not decode: {detail}"),
        }
    } else {
        Error::CorruptSource {
            key: key.into(),
            detail: detail.to_string(),
        }
    }
}

/// Maps an error met while decoding row groups: our own store errors pass through, the rest means
/// a page of the file is damaged ([`damaged`]: `CorruptSource`, or `IntegrityError` in our zones).
pub fn decode_error(key: &str, err: ParquetError) -> Error {
    match err {
        ParquetError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => damaged(key, other),
        },
        other => damaged(key, other),
    }
}

/// Maps an error met while encoding: the sink's own store errors pass through (they already say
/// whether a retry may help); anything else is the encoder's, `ParquetWriteFailed`.
pub fn write_error(key: &str, err: ParquetError) -> Error {
    match err {
        ParquetError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::ParquetWriteFailed {
                key: key.into(),
                detail: other.to_string(),
            },
        },
        other => Error::ParquetWriteFailed {
            key: key.into(),
            detail: other.to_string(),
        },
    }
}

/// An [`AsyncFileWriter`] into an object sink. The object appears only when [`ParquetSink::finish`] runs.
pub struct SinkWriter {
    sink: Option<Box<dyn ObjectSink>>,
}

impl AsyncFileWriter for SinkWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            match self.sink.as_mut() {
                Some(sink) => sink.write(bs).await.map_err(|e| ParquetError::External(Box::new(e))),
                None => Err(ParquetError::General("write after completion".into())),
            }
        }
        .boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        // Publishing is deferred to ParquetSink::finish, which needs the ObjectInfo back.
        async { Ok(()) }.boxed()
    }
}

/// Writer settings for the objects of one of our zones: its codec ([`codec`]), its encodings,
/// statistics for Athena's pruning, row groups small enough that a writer's buffer stays within a
/// Lambda's memory.
///
/// No page CRCs: parquet 60's writer cannot write them (`crc: None` in its page header, marked
/// TODO upstream); readers verify them wherever a file has them. Our own objects are guarded
/// instead by the CRC64-NVME each manifest records and each stage re-checks as it reads.
pub fn writer_properties(zone: Zone, max_row_group_rows: usize) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(codec(zone))
        .set_max_row_group_row_count(Some(max_row_group_rows))
        .set_created_by(format!("tripflow {}", env!("CARGO_PKG_VERSION")));
    let builder = UNIQUE_VALUED_COLUMNS.iter().fold(builder, |builder, column| {
        builder.set_column_dictionary_enabled(ColumnPath::from(*column), false)
    });
    match zone {
        Zone::Curated => builder,
        Zone::Clean | Zone::Quarantine => TIMESTAMP_COLUMNS.iter().fold(builder, |builder, column| {
            builder.set_column_encoding(ColumnPath::from(*column), Encoding::DELTA_BINARY_PACKED)
        }),
    }
    .build()
}

/// Each zone's codec, chosen by measurement (the README's performance section has the account):
/// - curated, what Athena and the load read, Snappy (2026-12-04, three interleaved runs of a
///   1.93 M-row month): transform keeps a file open per day, 31 writers of 17 columns, and every
///   column writer of parquet's zstd codec holds a decompression context it never uses (some
///   75 KiB each, 39 MB of a 116 MB heap peak in heaptrack) and makes a fresh pair per row group.
///   Against zstd level 1, transform 1.08-1.21 s to 0.90-0.96 s and its peak RSS 152-158 to
///   139-145 MiB (at 10x, 180 to 146 MiB live), for files 18% larger (64 to 75 MB). Snappy is what
///   Spark writes by default: every reader of the Glue catalog has it.
/// - clean and quarantine, none (2026-12-05): the clean file is written once, by clean, and read
///   once, by transform, so its codec costs both stages. Its row groups are large (256 K rows), so
///   the dictionaries leave Snappy little to find: it saved 8% of the bytes (50.1 to 46.3 MB) for a
///   tenth of clean's CPU. With the timestamps delta-packed ([`TIMESTAMP_COLUMNS`]) the file is
///   smaller than it was with Snappy (40.2 MB). Ten interleaved rounds against Snappy over plain
///   timestamps: clean 0.490 to 0.437 s, clean + transform 1.121 to 1.046 s (faster in 8 of 10).
pub fn codec(zone: Zone) -> Compression {
    match zone {
        Zone::Curated => Compression::SNAPPY,
        Zone::Clean | Zone::Quarantine => Compression::UNCOMPRESSED,
    }
}

/// The timestamp columns, which clean and quarantine files hold DELTA_BINARY_PACKED: to the second,
/// within a month, so a difference takes some 43 bits where a plain value takes 64 (15.4 to
/// 10.4 MB each in a 1.93 M-row clean file; Snappy had found 9%). Curated files keep them plain
/// under Snappy: parquet's delta encoder reserves a 1 MiB buffer per column up front and counts it
/// in the writer's memory, so with transform's 31 day files open the reservations alone passed the
/// write budget and closed row groups at half their rows (files larger); counting them out of the
/// budget took transform's peak RSS from 121 to 156 MiB.
const TIMESTAMP_COLUMNS: [&str; 2] = [crate::contract::col::PICKUP_AT, crate::contract::col::DROPOFF_AT];

/// Columns whose values are nearly all distinct (the timestamps, to the second, and the speed): a
/// dictionary of them is as large as the values, and building it hashes every value and holds a
/// table per open file, for nothing. They are written without one (plain, or delta-packed where
/// [`TIMESTAMP_COLUMNS`] says) and left to the zone's codec. Every other column repeats a few
/// hundred or thousand values and keeps its dictionary.
const UNIQUE_VALUED_COLUMNS: [&str; 3] = [
    crate::contract::col::PICKUP_AT,
    crate::contract::col::DROPOFF_AT,
    crate::handoff::curated::SPEED_MPH,
];

/// A Parquet file being written to the store; all-or-nothing.
pub struct ParquetSink {
    key: String,
    writer: AsyncArrowWriter<SinkWriter>,
    rows: u64,
}

impl ParquetSink {
    /// A file of `zone`, whose encodings it takes ([`writer_properties`]).
    pub async fn create(
        store: &dyn ObjectStore,
        key: &str,
        schema: SchemaRef,
        zone: Zone,
        max_row_group_rows: usize,
    ) -> Result<Self> {
        let sink = store.create(key).await?;
        let writer = AsyncArrowWriter::try_new(
            SinkWriter { sink: Some(sink) },
            schema,
            Some(writer_properties(zone, max_row_group_rows)),
        )
        .map_err(|e| write_error(key, e))?;
        Ok(ParquetSink {
            key: key.to_string(),
            writer,
            rows: 0,
        })
    }

    pub async fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).await.map_err(|e| write_error(&self.key, e))
    }

    /// Memory held for the current row group: encoded pages plus values not yet encoded.
    pub fn buffered_bytes(&self) -> usize {
        self.writer.memory_size()
    }

    /// Ends the current row group early, to bound memory.
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await.map_err(|e| write_error(&self.key, e))
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Row groups closed so far.
    pub fn row_groups(&self) -> usize {
        self.writer.flushed_row_groups().len()
    }

    /// Writes the footer and publishes the object.
    pub async fn finish(self) -> Result<(ObjectInfo, u64)> {
        let rows = self.rows;
        let key = self.key;
        let mut writer = self.writer;
        writer.finish().await.map_err(|e| write_error(&key, e))?;
        let mut inner = writer.into_inner();
        let sink = inner
            .sink
            .take()
            .ok_or_else(|| Error::InvalidInput(format!("{key} finished twice")))?;
        Ok((sink.finish().await?, rows))
    }

    /// Throws the file away; nothing appears in the store.
    pub async fn abort(self) -> Result<()> {
        let mut inner = self.writer.into_inner();
        match inner.sink.take() {
            Some(sink) => sink.abort().await,
            None => Ok(()),
        }
    }
}

/// Encoding lanes of a [`ColumnParallelSink`]: one per core.
const ENCODE_LANES: usize = 2;
/// Batches a lane may hold queued before the stage producing them waits.
const LANE_QUEUE_BATCHES: usize = 1;

/// A Parquet file being written to the store, all-or-nothing like [`ParquetSink`], whose columns
/// encode on [`ENCODE_LANES`] tasks, each with its share of the columns: a single
/// writer's encoding was 60% of clean's CPU, on one core, while the rules kept the other busy a
/// third of the time. Row groups are cut at `max_row_group_rows`, as [`ParquetSink`] cuts them.
pub struct ColumnParallelSink {
    key: String,
    sink: Box<dyn ObjectSink>,
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    max_row_group_rows: usize,
    rows: u64,
    group: Option<RowGroupLanes>,
}

/// The row group being encoded: its rows so far and the lanes encoding its columns.
struct RowGroupLanes {
    rows: usize,
    lanes: Vec<EncodeLane>,
}

/// One lane: the columns it encodes (by index) and the thread encoding them.
struct EncodeLane {
    columns: Vec<usize>,
    queue: tokio::sync::mpsc::Sender<Vec<ArrowLeafColumn>>,
    task: tokio::task::JoinHandle<parquet::errors::Result<Vec<ArrowColumnChunk>>>,
}

impl ColumnParallelSink {
    /// A file of `zone`, whose encodings it takes ([`writer_properties`]).
    pub async fn create(
        store: &dyn ObjectStore,
        key: &str,
        schema: SchemaRef,
        zone: Zone,
        max_row_group_rows: usize,
    ) -> Result<Self> {
        // ArrowWriter sets up what a reader expects of the file (the Arrow schema in its metadata,
        // the codec and encodings per column); its lower-level parts then take the row groups.
        let properties = writer_properties(zone, max_row_group_rows);
        let writer =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).map_err(|e| write_error(key, e))?;
        let (file, factory) = writer.into_serialized_writer().map_err(|e| write_error(key, e))?;
        let sink = store.create(key).await?;
        Ok(ColumnParallelSink {
            key: key.to_string(),
            sink,
            file,
            factory,
            schema,
            max_row_group_rows: max_row_group_rows.max(1),
            rows: 0,
            group: None,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Hands the batch's columns to the lanes, closing each row group that fills up on the way.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let group = match self.group.as_mut() {
                Some(group) => group,
                None => self.group.insert(self.start_group()?),
            };
            let take = (self.max_row_group_rows - group.rows).min(batch.num_rows() - offset);
            let part = batch.slice(offset, take);
            let mut leaves = Vec::with_capacity(part.num_columns());
            for (field, column) in self.schema.fields().iter().zip(part.columns()) {
                leaves.extend(compute_leaves(field, column).map_err(|e| write_error(&self.key, e))?);
            }
            let mut leaves: Vec<Option<ArrowLeafColumn>> = leaves.into_iter().map(Some).collect();
            for lane in &group.lanes {
                let share = lane.columns.iter().filter_map(|&c| leaves[c].take()).collect();
                if lane.queue.send(share).await.is_err() {
                    // The lane stopped: its error comes back when the group closes.
                    break;
                }
            }
            group.rows += take;
            self.rows += take as u64;
            offset += take;
            if group.rows == self.max_row_group_rows {
                self.close_group().await?;
            }
        }
        Ok(())
    }

    fn start_group(&self) -> Result<RowGroupLanes> {
        let writers = self
            .factory
            .create_column_writers(self.file.flushed_row_groups().len())
            .map_err(|e| write_error(&self.key, e))?;
        let mut shares: Vec<(Vec<usize>, Vec<ArrowColumnWriter>)> =
            (0..ENCODE_LANES).map(|_| (Vec::new(), Vec::new())).collect();
        for (index, writer) in writers.into_iter().enumerate() {
            let share = &mut shares[index % ENCODE_LANES];
            share.0.push(index);
            share.1.push(writer);
        }
        let lanes = shares
            .into_iter()
            .map(|(columns, mut writers)| {
                let (queue, mut received) = tokio::sync::mpsc::channel::<Vec<ArrowLeafColumn>>(LANE_QUEUE_BATCHES);
                let task = tokio::spawn(async move {
                    while let Some(leaves) = received.recv().await {
                        for (writer, leaf) in writers.iter_mut().zip(&leaves) {
                            writer.write(leaf)?;
                        }
                    }
                    writers.into_iter().map(ArrowColumnWriter::close).collect()
                });
                EncodeLane { columns, queue, task }
            })
            .collect();
        Ok(RowGroupLanes { rows: 0, lanes })
    }

    /// Waits for the lanes to finish the row group's column chunks, appends them to the file in
    /// column order and sends the row group's bytes to the store.
    async fn close_group(&mut self) -> Result<()> {
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let mut chunks: Vec<(usize, ArrowColumnChunk)> = Vec::new();
        for lane in group.lanes {
            drop(lane.queue);
            let encoded = lane.task.await.map_err(|err| Error::ParquetWriteFailed {
                key: self.key.clone(),
                detail: format!("an encoding lane stopped: {err}"),
            })?;
            chunks.extend(
                lane.columns
                    .into_iter()
                    .zip(encoded.map_err(|e| write_error(&self.key, e))?),
            );
        }
        chunks.sort_by_key(|(column, _)| *column);
        let mut row_group = self.file.next_row_group().map_err(|e| write_error(&self.key, e))?;
        for (_, chunk) in chunks {
            chunk
                .append_to_row_group(&mut row_group)
                .map_err(|e| write_error(&self.key, e))?;
        }
        row_group.close().map_err(|e| write_error(&self.key, e))?;
        self.send_written().await
    }

    /// Sends what the file writer has put in its buffer.
    async fn send_written(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| write_error(&self.key, ParquetError::External(Box::new(e))))?;
        let written = std::mem::take(self.file.inner_mut());
        if written.is_empty() {
            return Ok(());
        }
        self.sink.write(Bytes::from(written)).await
    }

    /// Closes the last row group, writes the footer and publishes the object.
    pub async fn finish(mut self) -> Result<(ObjectInfo, u64)> {
        let finished = async {
            self.close_group().await?;
            self.file.finish().map_err(|e| write_error(&self.key, e))?;
            self.send_written().await
        }
        .await;
        match finished {
            Ok(()) => Ok((self.sink.finish().await?, self.rows)),
            Err(err) => {
                let _ = self.sink.abort().await;
                Err(err)
            }
        }
    }

    /// Throws the file away; nothing appears in the store. The lanes stop when their queues close.
    pub async fn abort(self) -> Result<()> {
        let ColumnParallelSink { sink, group, .. } = self;
        drop(group);
        sink.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH_ROWS: usize = 64 * 1024;

    #[test]
    fn a_damaged_page_is_the_source_s_fault_in_raw_and_ours_in_our_zones() {
        let crc = || ParquetError::General("Page CRC checksum mismatch".into());
        let raw = decode_error("raw/yellow/2021-03/yellow_tripdata_2021-03.parquet", crc());
        assert_eq!(raw.name(), "CorruptSource");
        assert!(raw.to_string().contains("CRC"), "{raw}");
        assert_eq!(
            decode_error("landing/yellow_tripdata_2021-03.parquet", crc()).name(),
            "CorruptSource"
        );
        for key in [
            "clean/yellow/period=2021-03/yellow_tripdata_2021-03.parquet",
            "curated/yellow/pickup_date=2021-03-01/yellow_tripdata_2021-03.parquet",
        ] {
            assert_eq!(decode_error(key, crc()).name(), "IntegrityError", "{key}");
        }
        // The store's own errors keep their names, whoever reads.
        let slow = Error::StorageUnavailable {
            action: "reading",
            key: "raw/x".into(),
            detail: "SlowDown".into(),
        };
        assert_eq!(
            decode_error("raw/x", ParquetError::External(Box::new(slow))).name(),
            "StorageUnavailable"
        );
    }

    async fn write_ints(store: &dyn ObjectStore, key: &str, values: std::ops::Range<i32>) -> ObjectInfo {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "n",
            arrow::datatypes::DataType::Int32,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int32Array::from_iter_values(values))],
        )
        .unwrap();
        let mut sink = ParquetSink::create(store, key, schema, Zone::Curated, 2 * BATCH_ROWS)
            .await
            .unwrap();
        sink.write(&batch).await.unwrap();
        sink.finish().await.unwrap().0
    }

    #[test]
    fn only_the_columns_of_repeated_values_get_a_dictionary() {
        use crate::contract::col;
        for zone in Zone::PUBLISH_ORDER {
            let props = writer_properties(zone, BATCH_ROWS);
            let dictionary = |column: &str| props.dictionary_enabled(&ColumnPath::from(column));
            for column in [col::PICKUP_AT, col::DROPOFF_AT, crate::handoff::curated::SPEED_MPH] {
                assert!(!dictionary(column), "{zone:?} {column}");
            }
            for column in [
                col::PU_LOCATION_ID,
                col::TRIP_DISTANCE,
                col::FARE_AMOUNT,
                col::PAYMENT_TYPE,
            ] {
                assert!(dictionary(column), "{zone:?} {column}");
            }
        }
    }

    /// Clean and quarantine files: no codec, timestamps delta-packed; curated: Snappy, timestamps
    /// plain. Every value, nulls and timestamps out of order included, reads back as written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_zone_writes_its_codec_and_timestamp_encoding_and_reads_back_what_it_wrote() {
        use crate::contract::{self, col};
        use arrow::array::{ArrayRef, Float64Array, Int32Array, TimestampMicrosecondArray, new_null_array};
        use parquet::basic::Encoding;

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::storage::LocalStore::open(dir.path()).unwrap());
        let schema = contract::canonical_schema();
        let rows = 5_000i64;
        // Pickups to the second in March 2021, in no order, one null; dropoffs a day earlier plus up to
        // an hour, so the delta-packed differences run both ways and past the month's start.
        let march = 1_614_556_800_000_000i64;
        let pickup = |i: i64| (i != 17).then(|| march + (i * 7_919 % 2_678_400) * 1_000_000);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    col::PICKUP_AT => Arc::new(TimestampMicrosecondArray::from_iter((0..rows).map(pickup))),
                    col::DROPOFF_AT => Arc::new(TimestampMicrosecondArray::from_iter(
                        (0..rows).map(|i| pickup(i).map(|p| p + (i % 3_600) * 1_000_000 - 86_400_000_000)),
                    )),
                    col::PU_LOCATION_ID => {
                        Arc::new(Int32Array::from_iter_values((0..rows).map(|i| (i % 265) as i32 + 1)))
                    }
                    col::FARE_AMOUNT => Arc::new(Float64Array::from_iter(
                        (0..rows).map(|i| (i % 11 != 0).then_some((i % 500) as f64 / 4.0)),
                    )),
                    _ => new_null_array(f.data_type(), rows as usize),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();

        let mut clean = ColumnParallelSink::create(store.as_ref(), "clean/z", schema.clone(), Zone::Clean, 2_000)
            .await
            .unwrap();
        clean.write(&batch).await.unwrap();
        clean.finish().await.unwrap();
        for (zone, key) in [(Zone::Quarantine, "quarantine/z"), (Zone::Curated, "curated/z")] {
            let mut sink = ParquetSink::create(store.as_ref(), key, schema.clone(), zone, 2_000)
                .await
                .unwrap();
            sink.write(&batch).await.unwrap();
            sink.finish().await.unwrap();
        }

        for (zone, key) in [
            (Zone::Clean, "clean/z"),
            (Zone::Quarantine, "quarantine/z"),
            (Zone::Curated, "curated/z"),
        ] {
            let bytes = Bytes::from(std::fs::read(dir.path().join(key)).unwrap());
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            for group in reader.metadata().row_groups() {
                for chunk in group.columns() {
                    let name = chunk.column_path().string();
                    let codec = match zone {
                        Zone::Curated => Compression::SNAPPY,
                        Zone::Clean | Zone::Quarantine => Compression::UNCOMPRESSED,
                    };
                    assert_eq!(chunk.compression(), codec, "{zone:?} {name}");
                    let delta = chunk.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED);
                    let timestamp = name == col::PICKUP_AT || name == col::DROPOFF_AT;
                    assert_eq!(delta, timestamp && zone != Zone::Curated, "{zone:?} {name}");
                    if name == col::PU_LOCATION_ID {
                        assert!(
                            chunk.encodings().any(|e| e == Encoding::RLE_DICTIONARY),
                            "{zone:?} {name}"
                        );
                    }
                }
            }
            let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
            assert_eq!(
                arrow::compute::concat_batches(&schema, &read).unwrap(),
                batch,
                "{zone:?}"
            );
        }
    }

    #[test]
    fn ranges_close_together_are_fetched_as_one_span() {
        assert_eq!(coalesce(&[10..20, 0..5, 25..30, 100..110], 5), vec![0..30, 100..110]);
        assert_eq!(coalesce(&[0..10, 2..4], 0), vec![0..10]);
        assert_eq!(coalesce(&[5..5, 7..7], 0), Vec::<Range<u64>>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_column_parallel_sink_writes_every_row_in_order_in_row_groups_of_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::storage::LocalStore::open(dir.path()).unwrap());
        // Three columns over two lanes, one of them nullable.
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int32, false),
            arrow::datatypes::Field::new("half", arrow::datatypes::DataType::Float64, true),
            arrow::datatypes::Field::new("square", arrow::datatypes::DataType::Int64, false),
        ]));
        let rows = |range: std::ops::Range<i32>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(arrow::array::Int32Array::from_iter_values(range.clone())),
                    Arc::new(arrow::array::Float64Array::from_iter(
                        range.clone().map(|n| (n % 7 != 0).then_some(f64::from(n) / 2.0)),
                    )),
                    Arc::new(arrow::array::Int64Array::from_iter_values(
                        range.map(|n| i64::from(n) * i64::from(n)),
                    )),
                ],
            )
            .unwrap()
        };
        let mut sink = ColumnParallelSink::create(store.as_ref(), "clean/t", schema.clone(), Zone::Clean, 3000)
            .await
            .unwrap();
        for start in (0..10).map(|i| i * 1000) {
            sink.write(&rows(start..start + 1000)).await.unwrap();
        }
        assert_eq!(sink.rows(), 10_000);
        let (object, written) = sink.finish().await.unwrap();
        assert_eq!(written, 10_000);
        let bytes = std::fs::read(dir.path().join("clean/t")).unwrap();
        assert_eq!(object.size_bytes, bytes.len() as u64);
        let mut crc = crate::checksum::ChecksumCounter::crc64nvme();
        crc.update(&bytes);
        assert_eq!(object.checksum, crc.finish());

        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let row_groups: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(row_groups, [3000, 3000, 3000, 1000]);
        assert_eq!(reader.schema().fields(), schema.fields());
        let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let all = arrow::compute::concat_batches(&schema, &read).unwrap();
        assert_eq!(all, rows(0..10_000));

        // A batch the file cannot take fails it: the error names the object, and nothing appears.
        let other = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("half", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("square", arrow::datatypes::DataType::Utf8, false),
        ]));
        let text = RecordBatch::try_new(
            other,
            (0..3)
                .map(|_| Arc::new(arrow::array::StringArray::from(vec!["x"])) as arrow::array::ArrayRef)
                .collect(),
        )
        .unwrap();
        let mut sink = ColumnParallelSink::create(store.as_ref(), "clean/u", schema.clone(), Zone::Clean, 3000)
            .await
            .unwrap();
        let failed = async {
            sink.write(&text).await?;
            for _ in 0..LANE_QUEUE_BATCHES + 2 {
                sink.write(&rows(0..10)).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        let err = match failed {
            Err(err) => {
                sink.abort().await.unwrap();
                err
            }
            Ok(()) => sink.finish().await.unwrap_err(),
        };
        assert_eq!(err.name(), "ParquetWriteFailed", "{err}");
        assert!(err.to_string().contains("clean/u"), "{err}");
        assert!(!dir.path().join("clean/u").exists());
    }

    #[tokio::test]
    async fn read_ahead_yields_every_batch_of_every_object_in_order_then_the_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::storage::LocalStore::open(dir.path()).unwrap());
        let a = write_ints(store.as_ref(), "curated/a", 0..(BATCH_ROWS as i32 + 5)).await;
        let b = write_ints(store.as_ref(), "curated/b", 0..7).await;
        let missing = ObjectInfo {
            key: "curated/missing".into(),
            ..b.clone()
        };
        let objects = vec![a.clone(), b.clone(), missing, a.clone()];
        let mut batches = ReadAhead::verified_objects(store.clone(), objects, BATCH_ROWS);
        let mut seen = Vec::new();
        let err = loop {
            match batches.next_batch().await {
                Ok(Some((object, batch))) => seen.push((object, batch.num_rows())),
                Ok(None) => panic!("ended without the missing object's error"),
                Err(err) => break err,
            }
        };
        assert_eq!(seen, [(0, BATCH_ROWS), (0, 5), (1, 7)]);
        assert_eq!(err.name(), "IntegrityError", "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(batches.next_batch().await.unwrap().is_none(), "nothing after the error");

        // An object that is not what its manifest says yields no row at all.
        let claimed = ObjectInfo {
            checksum: crate::checksum::Checksum::Crc64nvme("AAAAAAAAAAA=".into()),
            ..b.clone()
        };
        let mut batches = ReadAhead::verified_objects(store.clone(), vec![claimed], BATCH_ROWS);
        let err = batches.next_batch().await.unwrap_err();
        assert_eq!(err.name(), "IntegrityError", "{err}");
        assert!(err.to_string().contains("CRC64-NVME"), "{err}");

        // A reader that stops early stops the decoder with it.
        let mut batches = ReadAhead::verified_objects(store, vec![a; 50], BATCH_ROWS);
        assert!(batches.next_batch().await.unwrap().is_some());
        let decoder = batches.decoder.abort_handle();
        drop(batches);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !decoder.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the decoder ends when its reader is dropped");
    }

    #[test]
    fn an_encoder_failure_is_a_write_failure_not_a_truncated_file() {
        let err = write_error("clean/x", ParquetError::General("bad batch".into()));
        assert_eq!(err.name(), "ParquetWriteFailed");
        let refused = Error::StorageRefused {
            action: "writing",
            key: "clean/x".into(),
            detail: "permission denied".into(),
        };
        assert_eq!(
            write_error("clean/x", ParquetError::External(Box::new(refused))).name(),
            "StorageRefused"
        );
    }
}
