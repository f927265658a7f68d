//! The handoff between stages, and the one place where a run's output becomes what readers see.
//!
//! - [`messages`]: each stage's typed input and output (the JSON the state machine passes on);
//! - [`manifest`]: the run-scoped manifests that pin the exact files a stage wrote and the next reads;
//! - [`curated`]: the curated schema, defined once (file columns, database columns, Glue columns);
//! - [`publish`] and friends: making an accepted run current in every zone and the database.
//!
//! Stages write files that nobody reads yet: clean and transform put their Parquet files under the
//! lake tables with names of their own run (`part-<run_id>.parquet`) and list them in their run's
//! manifest (`reports/<dataset>/<period>/runs/<run_id>/{clean,transform}.json`); load builds the
//! new database version without attaching it. The next stage reads exactly the files its input's
//! manifest lists, so two runs never read each other's output.
//!
//! [`publish`] then makes the run current, in this order, once every guard has passed:
//! 1. the **intent** (`runs/<run_id>/publish.json`): from here on the run is accepted and is rolled
//!    forward, never back;
//! 2. the database swap (the staged version attached, the current one kept as previous): first,
//!    because it is the step most likely to wait (an analyst's long query holds the table), and
//!    while it has not happened every reader still sees the old version everywhere;
//! 3. one Delta commit per lake table (quarantine, clean, curated) replacing the month's files;
//! 4. the version record (`versions/<N>.json`) and the current manifests (`clean.json`,
//!    `transform.json`, `load.json`), then the intent marked done.
//!
//! Every step is idempotent: a rerun finds the month's files already live and the version already
//! current, and completes the rest. A run that dies after step 1 is finished by the next run or
//! restore of the same month ([`roll_forward`]), so zones and database always end on one version.
//! [`restore`] is a publish of an earlier version's files and database table.

pub mod curated;
pub mod manifest;
pub mod messages;
mod publish;

pub use manifest::{Manifest, ManifestObject};
pub use messages::*;
pub use publish::*;
