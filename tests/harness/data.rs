//! The real TLC samples in `../shared/data` (beside the project checkout). A user's fresh clone has
//! no `../shared`: tests that need them skip with a message.

use std::path::PathBuf;

pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// The sample file's path, or `None` after printing why the test is skipped.
pub fn shared_file(name: &str) -> Option<PathBuf> {
    let path = shared_data_dir().join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} not found (the real TLC samples live in ../shared/data beside the checkout)",
            path.display()
        );
        None
    }
}
