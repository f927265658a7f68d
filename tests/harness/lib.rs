//! Shared pieces of the integration tests: real parts, started and stopped by the tests themselves.
//! - [`browser`]: headless Chromium rendering a local page to a screenshot and its text.
//! - [`pg::TestPostgres`]: a throwaway PostgreSQL cluster from the machine's binaries.
//! - [`data`]: the real TLC samples in `../shared/data`, when present.
//! - [`local::Setup`]: the whole pipeline over a local folder and a throwaway cluster.
//! - [`expected`]: a month's answers computed independently of the pipeline's code.
//! - [`moto`]: moto in server mode for S3, Glue, SNS and Step Functions.
//! - [`intercept::Intercepted`]: a store in front of a real one that counts reads or refuses a zone.
//! - [`parquet_crc`]: Parquet files with data-page CRCs, and damage inside one page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod data;
pub mod expected;
pub mod faults;
pub mod intercept;
pub mod local;
pub mod moto;
pub mod parquet_crc;
pub mod pg;
pub mod router;
