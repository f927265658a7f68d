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

/// A one-row Parquet file with the green-taxi columns (`lpep_*`): valid Parquet, wrong dataset.
pub fn green_taxi_parquet() -> Vec<u8> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("VendorID", DataType::Int64, true),
        Field::new("lpep_pickup_datetime", ts.clone(), true),
        Field::new("lpep_dropoff_datetime", ts, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1])),
        Arc::new(TimestampMicrosecondArray::from(vec![1_614_600_000_000_000])),
        Arc::new(TimestampMicrosecondArray::from(vec![1_614_600_600_000_000])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("a valid batch");
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).expect("a writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    bytes
}
