//! tripflow: an ETL pipeline for the NYC TLC yellow-taxi trip records.
//!
//! The stages (`stages::{ingest, clean, transform, load}`) each take a typed input and return a typed
//! output, the JSON the Step Functions state machine passes between states. They read and write the
//! zones through [`storage::ObjectStore`] (a local folder here, S3 in `tripflow-aws`) and know
//! nothing of Lambda: the Lambda binaries and the `tripflow` command are two front doors onto the
//! same code.

pub mod answers;
pub mod checksum;
pub mod config;
pub mod contract;
pub mod db;
pub mod error;
pub mod generator;
pub mod handoff;
pub mod lake;
pub mod lease;
pub mod parquet_io;
pub mod period;
pub mod pipeline;
pub mod progress;
pub mod quality;
pub mod stages;
pub mod storage;

pub use error::{Error, Result};
