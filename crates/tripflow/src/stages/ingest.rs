//! **ingest + checksum.** Triggered by a new object in `landing/` (or a URL or local path given to
//! `tripflow run`). Streams the source into `raw/<dataset>/<period>/`, computing its MD5 on the way;
//! verifies the MD5 against the one given (input, or a `<source>.md5` sidecar); checks the bytes are
//! Parquet (magic at both ends, a readable footer), that the schema meets the contract and that it
//! holds rows (`EmptySource`); all before the raw object is published, so a bad source leaves
//! nothing in `raw/`. Writes the ingest manifest
//! to `reports/` and returns keys, size, MD5 and row counts.

use std::path::PathBuf;
use std::time::Duration;

use futures::TryStreamExt;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use tracing::info;

use super::{StageContext, Verdict};
use crate::checksum::{ChecksumCounter, parse_md5_hex};
use crate::contract;
use crate::error::{Error, Result, chain};
use crate::handoff::manifest::{Manifest, ManifestObject};
use crate::period::{TlcFileName, file_name_of, resolve_period};
use crate::progress::{StageProgress, Unit};
use crate::storage::local::open_file_stream;
use crate::storage::{ByteStream, Layout, ObjectStore, get_bytes};

pub const STAGE: &str = crate::handoff::INGEST;

pub use crate::handoff::{IngestInput, IngestOutput, new_run_id};
/// The footer must fit in the tail we keep while streaming; TLC footers are a few KiB.
const TAIL_BYTES: usize = 8 << 20;

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    StoreKey(String),
    LocalPath(PathBuf),
}

impl Source {
    /// Classifies a source string. `s3://<bucket>/<key>` must name the store's own bucket.
    pub fn parse(raw: &str, store: &dyn ObjectStore) -> Result<Self> {
        let raw = raw.trim();
        if raw.starts_with("https://") || raw.starts_with("http://") {
            return Ok(Source::Url(raw.to_string()));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if store.describe() != format!("s3://{bucket}") || key.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{raw} is not an object of {}",
                    store.describe()
                )));
            }
            return Ok(Source::StoreKey(key.to_string()));
        }
        if raw.starts_with(crate::storage::layout::LANDING) {
            return Ok(Source::StoreKey(raw.to_string()));
        }
        if raw.is_empty() {
            return Err(Error::InvalidInput("source is empty".into()));
        }
        Ok(Source::LocalPath(PathBuf::from(raw)))
    }

    async fn open(&self, store: &dyn ObjectStore, http: &Http) -> Result<ByteStream> {
        match self {
            Source::StoreKey(key) => store.get(key).await,
            Source::LocalPath(path) => open_file_stream(path, &path.display().to_string()).await,
            Source::Url(url) => open_url(http, url).await,
        }
    }

    /// The `<source>.md5` sidecar's content, if there is one.
    async fn sidecar_md5(&self, store: &dyn ObjectStore, http: &Http) -> Result<Option<String>> {
        let text = match self {
            Source::StoreKey(key) => match get_bytes(store, &format!("{key}.md5")).await {
                Ok(body) => Some(String::from_utf8_lossy(&body).into_owned()),
                Err(Error::ObjectNotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            Source::LocalPath(path) => {
                let mut sidecar = path.clone().into_os_string();
                sidecar.push(".md5");
                match tokio::fs::read_to_string(PathBuf::from(sidecar)).await {
                    Ok(text) => Some(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io("reading", path.display().to_string(), e)),
                }
            }
            Source::Url(url) => {
                // Errors name the sidecar: it is what failed, and the main URL may be fine.
                let sidecar = format!("{url}.md5");
                let response = http
                    .client
                    .get(&sidecar)
                    .send()
                    .await
                    .map_err(|e| http.error(&sidecar, &e))?;
                if response.status().is_success() {
                    Some(response.text().await.map_err(|e| http.error(&sidecar, &e))?)
                } else {
                    None
                }
            }
        };
        match text {
            None => Ok(None),
            Some(text) => parse_md5_hex(&text)
                .map(Some)
                .ok_or_else(|| Error::InvalidInput(format!("the MD5 sidecar of {} holds no MD5", self.name()))),
        }
    }

    fn name(&self) -> String {
        match self {
            Source::Url(url) => url.clone(),
            Source::StoreKey(key) => key.clone(),
            Source::LocalPath(path) => path.display().to_string(),
        }
    }
}

/// The HTTP client for `https://` sources, built with the configured timeouts.
struct Http {
    client: reqwest::Client,
    timeouts: HttpTimeouts,
}

/// The configured waits, kept to say which one ran out.
#[derive(Debug, Clone, Copy)]
struct HttpTimeouts {
    connect_s: f64,
    read_s: f64,
}

impl Http {
    fn new(config: &crate::config::PipelineConfig, allow_http: bool) -> Result<Self> {
        let timeouts = HttpTimeouts {
            connect_s: config.http_connect_timeout_s,
            read_s: config.http_read_timeout_s,
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("tripflow/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs_f64(timeouts.connect_s))
            .read_timeout(Duration::from_secs_f64(timeouts.read_s))
            // A redirect from https:// to http:// must not slip past the scheme check.
            .https_only(!allow_http)
            .build()
            .map_err(|e| Error::InvalidInput(format!("HTTP client: {}", chain(&e))))?;
        Ok(Http { client, timeouts })
    }

    fn error(&self, url: &str, err: &reqwest::Error) -> Error {
        self.timeouts.error(url, err)
    }
}

impl HttpTimeouts {
    /// A timeout is `Timeout` naming the URL and which wait ran out; anything else
    /// `SourceUnavailable` with the whole cause chain (reqwest's own text says only "error sending
    /// request").
    fn error(self, url: &str, err: &reqwest::Error) -> Error {
        if err.is_timeout() {
            let (what, after_s) = if err.is_connect() {
                (format!("connecting to {url}"), self.connect_s)
            } else {
                (format!("reading from {url}"), self.read_s)
            };
            return Error::Timeout { what, after_s };
        }
        unavailable(url, chain(err))
    }
}

fn unavailable(url: &str, detail: impl std::fmt::Display) -> Error {
    Error::SourceUnavailable {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// Plain `http://` is refused unless the caller asked for it.
fn check_scheme(url: &str, allow_http: bool) -> Result<()> {
    if url.starts_with("http://") && !allow_http {
        return Err(Error::InvalidInput(format!(
            "{url}: plain http:// is not fetched; use https:// or pass --allow-http (event field allow_http)"
        )));
    }
    Ok(())
}

async fn open_url(http: &Http, url: &str) -> Result<ByteStream> {
    let response = http.client.get(url).send().await.map_err(|e| http.error(url, &e))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::ObjectNotFound { key: url.to_string() });
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(unavailable(url, format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(Error::InvalidInput(format!("{url} answered HTTP {status}")));
    }
    let (url, timeouts) = (url.to_string(), http.timeouts);
    Ok(Box::pin(
        response.bytes_stream().map_err(move |e| timeouts.error(&url, &e)),
    ))
}

/// What streaming the source taught us.
struct Streamed {
    md5: String,
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// Keeps the first 4 bytes and the last `TAIL_BYTES` of a stream, so the footer can be checked
/// without a second pass over the file.
#[derive(Default)]
struct EndsKeeper {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl EndsKeeper {
    fn push(&mut self, chunk: &[u8]) {
        if self.head.len() < 4 {
            let take = (4 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        if chunk.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
            return;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
    }
}

/// Checks magic bytes and decodes the footer from the kept ends of the file.
fn footer_of(key: &str, streamed: &Streamed) -> Result<ParquetMetaData> {
    const MAGIC: &[u8] = b"PAR1";
    if streamed.head != MAGIC {
        let detail = if streamed.size == 0 {
            "the file is empty".to_string()
        } else {
            "no PAR1 magic at the start".to_string()
        };
        return Err(Error::NotParquet {
            key: key.to_string(),
            detail,
        });
    }
    let truncated = |detail: String| Error::TruncatedParquet {
        key: key.to_string(),
        detail,
    };
    let tail = &streamed.tail;
    if streamed.size < 12 || tail.len() < 8 || &tail[tail.len() - 4..] != MAGIC {
        return Err(truncated("no PAR1 magic at the end: the file was cut off".into()));
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&tail[tail.len() - 8..tail.len() - 4]);
    let footer_len = u32::from_le_bytes(len_bytes) as usize;
    if (footer_len as u64) + 12 > streamed.size {
        return Err(truncated(format!(
            "footer claims {footer_len} bytes, more than the file holds"
        )));
    }
    if footer_len + 8 > tail.len() {
        return Err(Error::SourceTooLarge {
            key: key.to_string(),
            detail: format!("its footer is {footer_len} bytes, above the limit of {TAIL_BYTES}"),
        });
    }
    let footer = &tail[tail.len() - 8 - footer_len..tail.len() - 8];
    ParquetMetaDataReader::decode_metadata(footer).map_err(|e| truncated(format!("unreadable footer: {e}")))
}

pub async fn run(ctx: &StageContext, input: IngestInput) -> Result<IngestOutput> {
    run_as(ctx, input, new_run_id()).await
}

/// [`run`] under a run id chosen by the caller: the Lambda claims the month for the id before the
/// run starts.
pub async fn run_as(ctx: &StageContext, input: IngestInput, run_id: String) -> Result<IngestOutput> {
    let started_at = chrono::Utc::now();
    let store = ctx.store.as_ref();
    let source = Source::parse(&input.source, store)?;
    let layout = layout_of(&input)?;
    let (dataset, period) = (layout.dataset.clone(), layout.period);
    let raw_key = layout.raw_key(&run_id);

    if let Source::Url(url) = &source {
        check_scheme(url, input.allow_http)?;
    }
    let http = Http::new(&ctx.config, input.allow_http)?;
    let expected_md5 = match &input.expected_md5 {
        Some(given) => Some(
            parse_md5_hex(given)
                .ok_or_else(|| Error::InvalidInput(format!("expected_md5 {given:?} is not a hex MD5")))?,
        ),
        None => source.sidecar_md5(store, &http).await?,
    };

    info!(source = %source.name(), %raw_key, expected_md5 = expected_md5.as_deref().unwrap_or("-"), "ingest started");
    let mut body = source.open(store, &http).await?;
    let mut sink = store.create(&raw_key).await?;
    let size = match &source {
        Source::StoreKey(key) => store.size(key).await.ok().flatten(),
        Source::LocalPath(path) => std::fs::metadata(path).ok().map(|m| m.len()),
        Source::Url(_) => None,
    };
    let progress = StageProgress::begin(ctx.progress.as_ref(), STAGE, Unit::Bytes, size);
    let streamed = async {
        let mut ends = EndsKeeper::default();
        // The source's MD5, of exactly the bytes the sink is given: one pass, no second read.
        let mut md5 = ChecksumCounter::md5();
        while let Some(chunk) = body.try_next().await? {
            progress.advance(chunk.len() as u64);
            ends.push(&chunk);
            md5.update(&chunk);
            sink.write(chunk).await?;
        }
        let size = md5.bytes();
        Ok::<_, Error>(Streamed {
            md5: md5.finish().value().to_string(),
            size,
            head: ends.head,
            tail: ends.tail,
        })
    }
    .await;

    // Everything is decided before the raw object is published: a bad source leaves nothing behind.
    let checked = streamed.and_then(|streamed| {
        if let Some(expected) = &expected_md5
            && *expected != streamed.md5
        {
            return Err(Error::ChecksumMismatch {
                key: source.name(),
                expected: expected.clone(),
                actual: streamed.md5.clone(),
            });
        }
        let metadata = footer_of(&source.name(), &streamed)?;
        let arrow_schema = parquet::arrow::parquet_to_arrow_schema(
            metadata.file_metadata().schema_descr(),
            metadata.file_metadata().key_value_metadata(),
        )
        .map_err(|e| Error::schema_drift("*", format!("schema not readable as Arrow: {e}")))?;
        let contract = contract::check(&arrow_schema)?;
        if metadata.file_metadata().num_rows() <= 0 {
            return Err(Error::EmptySource { key: source.name() });
        }
        Ok((streamed, metadata, contract))
    });
    let (streamed, metadata, contract) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            let _ = sink.abort().await;
            return Err(err);
        }
    };
    let raw = sink.finish().await?;

    let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
    let output = IngestOutput {
        verdict: Verdict::Ok,
        dataset,
        period,
        source: input.source.clone(),
        run_id: run_id.clone(),
        raw_key: raw.key.clone(),
        manifest_key: layout.run_report_key(&run_id, STAGE),
        size_bytes: streamed.size,
        md5: streamed.md5,
        md5_verified: expected_md5.is_some(),
        rows,
        row_groups: metadata.num_row_groups(),
        schema_variant: contract.variant,
        allow_shrink: input.allow_shrink,
    };
    Manifest::new(
        STAGE,
        layout.source_id(),
        vec![ManifestObject { object: raw, rows }],
        output.clone(),
    )
    .started(started_at)
    .write(store, &output.manifest_key)
    .await?;
    info!(rows, row_groups = output.row_groups, size_bytes = output.size_bytes, md5 = %output.md5, variant = %output.schema_variant, "ingest done");
    Ok(output)
}

/// The dataset and month a run of `input` writes: from the file name (`yellow_tripdata_2021-03`),
/// the month overridable by the input.
pub fn layout_of(input: &IngestInput) -> Result<Layout> {
    let name = file_name_of(&input.source);
    let period = resolve_period(name, input.period)?;
    let dataset = TlcFileName::parse(name)
        .map(|n| n.dataset)
        .unwrap_or_else(|| "yellow".to_string());
    Ok(Layout::new(dataset, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_keeper_keeps_the_first_four_and_the_last_bytes() {
        let mut ends = EndsKeeper::default();
        ends.push(b"PA");
        ends.push(b"R1xyz");
        assert_eq!(ends.head, b"PAR1");
        assert!(ends.tail.ends_with(b"PAR1xyz"));
    }

    #[test]
    fn a_stream_without_magic_is_not_parquet_and_a_cut_one_is_truncated() {
        let plain = Streamed {
            md5: String::new(),
            size: 20,
            head: b"<htm".to_vec(),
            tail: b"<html></html>".to_vec(),
        };
        assert_eq!(footer_of("k", &plain).unwrap_err().name(), "NotParquet");
        let cut = Streamed {
            md5: String::new(),
            size: 5000,
            head: b"PAR1".to_vec(),
            tail: vec![7u8; 64],
        };
        assert_eq!(footer_of("k", &cut).unwrap_err().name(), "TruncatedParquet");
        let mut lying = vec![0u8; 16];
        lying.extend_from_slice(&9999u32.to_le_bytes());
        lying.extend_from_slice(b"PAR1");
        let lying = Streamed {
            md5: String::new(),
            size: 24,
            head: b"PAR1".to_vec(),
            tail: lying,
        };
        assert_eq!(footer_of("k", &lying).unwrap_err().name(), "TruncatedParquet");
    }

    #[test]
    fn a_footer_beyond_the_kept_tail_is_too_large_not_truncated() {
        let mut tail = vec![0u8; 64];
        tail.extend_from_slice(&(TAIL_BYTES as u32 + 1).to_le_bytes());
        tail.extend_from_slice(b"PAR1");
        let huge = Streamed {
            md5: String::new(),
            size: 4 * TAIL_BYTES as u64,
            head: b"PAR1".to_vec(),
            tail,
        };
        let err = footer_of("k", &huge).unwrap_err();
        assert_eq!(err.name(), "SourceTooLarge");
        assert!(err.to_string().contains(&TAIL_BYTES.to_string()), "{err}");
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let err = check_scheme("http://example.org/yellow_tripdata_2021-03.parquet", false).unwrap_err();
        assert_eq!(err.name(), "InvalidInput");
        assert!(err.to_string().contains("--allow-http"), "{err}");
        assert!(check_scheme("http://example.org/x.parquet", true).is_ok());
        assert!(check_scheme("https://example.org/x.parquet", false).is_ok());
    }

    #[test]
    fn allow_http_defaults_to_false_in_events() {
        let input: IngestInput =
            serde_json::from_str(r#"{"source": "landing/yellow_tripdata_2021-03.parquet"}"#).unwrap();
        assert!(!input.allow_http);
    }
}
