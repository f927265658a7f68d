//! The optional Glue Data Catalog check run by load: the curated table analysts query through
//! Athena must sit on the curated prefix and have the curated columns. A crawler that guessed a
//! different schema (or a table someone edited) fails the load with `SchemaDrift` instead of
//! leaving Athena and PostgreSQL disagreeing.

use std::collections::BTreeSet;

use aws_sdk_glue::Client;
use tracing::info;
use tripflow::error::{Error, Result};
use tripflow::handoff::curated::glue_columns;

use crate::env::GlueTable;
use crate::sdk_error::{self, Class};

/// What the catalog says about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    pub location: Option<String>,
    /// Data columns and partition keys, as Glue stores them (lower case).
    pub columns: Vec<String>,
}

/// The columns a curated table must have: the curated file columns plus the `pickup_date` partition.
pub fn curated_columns() -> Vec<String> {
    glue_columns().into_iter().map(|(name, _)| name.to_string()).collect()
}

fn normalise_location(location: &str) -> String {
    location.trim().trim_end_matches('/').to_string()
}

/// Compares the catalog's table with what transform writes. Column names compare case-insensitively
/// (Glue lower-cases them); the location must be the curated prefix, with or without its final `/`.
pub fn compare(table: &str, facts: &TableFacts, expected_location: &str, expected_columns: &[String]) -> Result<()> {
    let expected_location = normalise_location(expected_location);
    match facts.location.as_deref().map(normalise_location) {
        Some(found) if found == expected_location => {}
        found => {
            return Err(Error::schema_drift(
                format!("{table} (location)"),
                format!(
                    "Glue table points at {}, expected {expected_location}",
                    found.as_deref().unwrap_or("nothing")
                ),
            ));
        }
    }
    let lower = |names: &[String]| names.iter().map(|n| n.to_ascii_lowercase()).collect::<BTreeSet<_>>();
    let (expected, found) = (lower(expected_columns), lower(&facts.columns));
    if let Some(missing) = expected.difference(&found).next() {
        return Err(Error::schema_drift(
            missing.clone(),
            format!("curated column missing from Glue table {table}"),
        ));
    }
    if let Some(extra) = found.difference(&expected).next() {
        return Err(Error::schema_drift(
            extra.clone(),
            format!("Glue table {table} has a column transform does not write"),
        ));
    }
    Ok(())
}

/// A Glue client and the table to check.
#[derive(Debug, Clone)]
pub struct CatalogCheck {
    client: Client,
    table: GlueTable,
}

impl CatalogCheck {
    pub fn new(client: Client, table: GlueTable) -> Self {
        CatalogCheck { client, table }
    }

    fn name(&self) -> String {
        format!("{}.{}", self.table.database, self.table.table)
    }

    /// Reads the table's location and columns. A missing table is drift too: the crawler has not
    /// catalogued the curated zone, so Athena cannot see what is about to be loaded.
    pub async fn facts(&self) -> Result<TableFacts> {
        let name = self.name();
        let answer = self
            .client
            .get_table()
            .database_name(&self.table.database)
            .name(&self.table.table)
            .send()
            .await
            .map_err(|err| {
                if let Some(kind) = sdk_error::timed_out(&err) {
                    let (waiting, after_s) = kind.limit(self.client.config().timeout_config());
                    return Error::Timeout {
                        what: format!("{waiting} to Glue for table {name} ({})", sdk_error::describe(&err)),
                        after_s,
                    };
                }
                catalog_error(&name, &err)
            })?;
        let Some(table) = answer.table() else {
            return Err(Error::schema_drift(name, "GetTable returned no table"));
        };
        let descriptor = table.storage_descriptor();
        let mut columns: Vec<String> = descriptor
            .map(|d| d.columns().iter().map(|c| c.name().to_string()).collect())
            .unwrap_or_default();
        columns.extend(table.partition_keys().iter().map(|c| c.name().to_string()));
        Ok(TableFacts {
            location: descriptor.and_then(|d| d.location()).map(str::to_string),
            columns,
        })
    }

    /// Fails with `SchemaDrift` unless the table matches the curated zone at `expected_location`.
    pub async fn verify(&self, expected_location: &str) -> Result<()> {
        let facts = self.facts().await?;
        compare(&self.name(), &facts, expected_location, &curated_columns())?;
        info!(table = %self.name(), location = expected_location, columns = facts.columns.len(), "Glue table matches the curated zone");
        Ok(())
    }
}

/// A Glue SDK error that is not a timeout: transient is `CatalogUnavailable` (retried), a missing
/// table `SchemaDrift`, any other refusal `InvalidInput`.
fn catalog_error<E>(
    name: &str,
    err: &aws_sdk_glue::error::SdkError<E, aws_sdk_glue::config::http::HttpResponse>,
) -> Error
where
    E: aws_sdk_glue::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match sdk_error::classify(err) {
        Class::NotFound => Error::schema_drift(name.to_string(), "table missing from the Glue Data Catalog"),
        Class::Transient => Error::CatalogUnavailable {
            action: "reading table",
            name: name.to_string(),
            detail: sdk_error::describe(err),
        },
        Class::Rejected => Error::InvalidInput(format!(
            "reading Glue table {name} refused: {}",
            sdk_error::describe(err)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(location: &str, columns: &[String]) -> TableFacts {
        TableFacts {
            location: Some(location.into()),
            columns: columns.iter().map(|c| c.to_ascii_lowercase()).collect(),
        }
    }

    #[test]
    fn a_table_with_the_curated_columns_on_the_curated_prefix_passes() {
        let columns = curated_columns();
        assert!(columns.iter().any(|c| c == "pickup_date") && columns.iter().any(|c| c == "speed_mph"));
        let table = facts("s3://b/curated/yellow/", &columns);
        assert!(compare("db.yellow", &table, "s3://b/curated/yellow", &columns).is_ok());
        assert!(compare("db.yellow", &table, "s3://b/curated/yellow/", &columns).is_ok());
    }

    #[test]
    fn a_missing_extra_or_misplaced_column_is_schema_drift_naming_it() {
        let columns = curated_columns();
        let missing: Vec<String> = columns.iter().filter(|c| *c != "speed_mph").cloned().collect();
        let err = compare(
            "db.t",
            &facts("s3://b/curated/yellow/", &missing),
            "s3://b/curated/yellow/",
            &columns,
        )
        .unwrap_err();
        assert_eq!(err.name(), "SchemaDrift");
        assert!(err.to_string().contains("speed_mph"), "{err}");

        let mut extra = columns.clone();
        extra.push("cbd_congestion_fee".into());
        let err = compare(
            "db.t",
            &facts("s3://b/curated/yellow/", &extra),
            "s3://b/curated/yellow/",
            &columns,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cbd_congestion_fee"), "{err}");

        let err = compare(
            "db.t",
            &facts("s3://b/clean/yellow/", &columns),
            "s3://b/curated/yellow/",
            &columns,
        )
        .unwrap_err();
        assert_eq!(err.name(), "SchemaDrift");
        assert!(err.to_string().contains("s3://b/clean/yellow"), "{err}");
    }
}
