//! The load function's PostgreSQL connection: from `DATABASE_URL`, or from a Secrets Manager secret
//! (the Aurora-managed one holds only `username` and `password`; host, port and database name then
//! come from `TRIPFLOW_DB_HOST`/`_PORT`/`_NAME`). TLS with rustls when the URL says
//! `sslmode=require` or the secret path asks for it (its default).
//!
//! One connection per Lambda instance, opened at init when the database answers and reopened on the
//! next invocation when it has been closed (failover, idle timeout, scale to zero). The secret is
//! read again at each reconnect, so a rotated password is picked up without a redeploy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{info, warn};
use tripflow::config::DbSettings;
use tripflow::error::{Error, Result};

use crate::env::{ConfigError, DEFAULT_DB_NAME, DEFAULT_DB_PORT, DbSource, ENV_DB_CA_FILE, SslMode};
use crate::sdk_error::{self, Class};

/// How long init waits for the first connection. Lambda gives init 10 s in all; a database that
/// takes longer (a paused Aurora Serverless cluster resuming) is connected on first use instead.
const INIT_CONNECT_BUDGET: Duration = Duration::from_secs(4);

/// The connection of one Lambda instance.
pub struct Database {
    source: DbSource,
    secrets: Option<aws_sdk_secretsmanager::Client>,
    /// Built once at init (the CA file is read then, so a bad one fails init).
    tls: MakeRustlsConnect,
    /// Connect, statement and lock timeouts, the same as `tripflow run` uses.
    settings: DbSettings,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The connection settings a secret provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCredentials {
    pub username: String,
    pub password: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

/// Reads the secret's JSON (`SecretString`). RDS writes `port` as a number, people as a string.
pub fn parse_secret(arn: &str, text: &str) -> Result<SecretCredentials> {
    let bad = |detail: &str| Error::DatabaseError(format!("secret {arn}: {detail}"));
    let json: Value = serde_json::from_str(text).map_err(|_| bad("is not a JSON object"))?;
    let text_field = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    let port = match json.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad("port is not a port number"))?,
        ),
        Some(Value::String(s)) => Some(s.trim().parse::<u16>().map_err(|_| bad("port is not a port number"))?),
        Some(_) => return Err(bad("port is not a port number")),
    };
    Ok(SecretCredentials {
        username: text_field("username").ok_or_else(|| bad("has no username"))?,
        password: text_field("password").ok_or_else(|| bad("has no password"))?,
        host: text_field("host"),
        port,
        dbname: text_field("dbname"),
    })
}

/// The connection config of a secret-configured database: the environment's host, port and name win
/// over the secret's (the secret names the cluster; the function may need to reach it through a
/// proxy), then the secret's, then the defaults.
pub fn secret_config(
    creds: &SecretCredentials,
    host: Option<&str>,
    port: Option<u16>,
    dbname: Option<&str>,
    sslmode: SslMode,
) -> Result<Config> {
    let host = host.or(creds.host.as_deref()).ok_or_else(|| {
        Error::DatabaseError(format!(
            "the database secret has no host: set {}",
            crate::env::ENV_DB_HOST
        ))
    })?;
    let mut config = Config::new();
    config
        .host(host)
        .port(port.or(creds.port).unwrap_or(DEFAULT_DB_PORT))
        .dbname(dbname.or(creds.dbname.as_deref()).unwrap_or(DEFAULT_DB_NAME))
        .user(&creds.username)
        .password(&creds.password)
        .application_name("tripflow-load")
        .ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        });
    Ok(config)
}

/// rustls with the public web roots (enough for RDS Proxy, whose certificates chain to Amazon's
/// public CAs) plus the certificates of `ca_file` (the RDS CA bundle for direct Aurora connections).
pub fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let malformed = |problem: String| ConfigError::Malformed {
            name: ENV_DB_CA_FILE,
            problem,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| malformed(format!("{}: {e}", path.display())))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| malformed(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(malformed(format!("{} holds no PEM certificate", path.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| malformed(format!("{}: {e}", path.display())))?;
        }
    }
    // An explicit provider: with more than one rustls backend compiled in, the implicit default
    // would panic at first use instead of failing here.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Malformed {
            name: ENV_DB_CA_FILE,
            problem: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn unavailable(err: impl std::fmt::Display) -> Error {
    Error::DatabaseUnavailable(err.to_string())
}

impl Database {
    /// Prepares the connection and tries to open it. A database that does not answer yet is not an
    /// init failure: the first invocation retries and reports `DatabaseUnavailable`, which the state
    /// machine retries with backoff, where a failed init would surface as an opaque runtime error.
    pub async fn open(
        source: DbSource,
        ca_file: Option<&Path>,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Result<Self, ConfigError> {
        Self::open_with(source, ca_file, sdk, DbSettings::default()).await
    }

    /// [`Database::open`] with explicit timeouts (`TRIPFLOW_DB_*_TIMEOUT_S`, read at init).
    pub async fn open_with(
        source: DbSource,
        ca_file: Option<&Path>,
        sdk: Option<&aws_config::SdkConfig>,
        settings: DbSettings,
    ) -> Result<Self, ConfigError> {
        let secrets = match (&source, sdk) {
            (DbSource::Secret { .. }, Some(sdk)) => Some(aws_sdk_secretsmanager::Client::new(sdk)),
            (DbSource::Secret { .. }, None) => {
                return Err(ConfigError::Conflict(
                    "a secret-configured database needs AWS configuration".into(),
                ));
            }
            (DbSource::Url(_), _) => None,
        };
        let database = Database {
            source,
            secrets,
            tls: tls_connector(ca_file)?,
            settings,
            client: Mutex::new(None),
        };
        match tokio::time::timeout(INIT_CONNECT_BUDGET, database.connect()).await {
            Ok(Ok(client)) => *database.client.lock().await = Some(client),
            Ok(Err(err)) => warn!(error = %err, "database not reachable at init; will connect on first use"),
            Err(_) => {
                warn!(budget = ?INIT_CONNECT_BUDGET, "database slow to answer at init; will connect on first use")
            }
        }
        Ok(database)
    }

    /// The open connection, reconnecting first if there is none or it was closed.
    pub async fn client(&self) -> Result<MappedMutexGuard<'_, Client>> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            if slot.is_some() {
                info!("database connection was closed; reconnecting");
            }
            *slot = Some(self.connect().await?);
        }
        MutexGuard::try_map(slot, Option::as_mut).map_err(|_| unavailable("no connection after connecting"))
    }

    async fn config(&self) -> Result<Config> {
        let mut config = match &self.source {
            DbSource::Url(url) => tripflow::db::parse_url(url)?,
            DbSource::Secret {
                arn,
                host,
                port,
                dbname,
                sslmode,
            } => {
                let creds = self.read_secret(arn).await?;
                secret_config(&creds, host.as_deref(), *port, dbname.as_deref(), *sslmode)?
            }
        };
        tripflow::db::apply_connect_options(&mut config);
        // So operators can tell the function's sessions apart in pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name("tripflow-load");
        }
        Ok(config)
    }

    async fn read_secret(&self, arn: &str) -> Result<SecretCredentials> {
        let Some(secrets) = &self.secrets else {
            return Err(Error::DatabaseError("no Secrets Manager client".into()));
        };
        let secret = secrets.get_secret_value().secret_id(arn).send().await.map_err(|err| {
            let detail = format!("reading secret {arn}: {}", sdk_error::describe(&err));
            match sdk_error::classify(&err) {
                Class::Transient => Error::DatabaseUnavailable(detail),
                Class::NotFound | Class::Rejected => Error::DatabaseError(detail),
            }
        })?;
        let text = secret
            .secret_string()
            .ok_or_else(|| Error::DatabaseError(format!("secret {arn} has no SecretString")))?;
        parse_secret(arn, text)
    }

    async fn connect(&self) -> Result<Client> {
        let config = self.config().await?;
        let target = tripflow::db::describe_target(&config);
        // The whole of it, TLS and the startup handshake included, within the connect timeout: a
        // server that accepts and never answers is a `Timeout`, not a hang until the Lambda's end.
        let client =
            tripflow::db::within_connect_timeout(&self.settings, &target, self.connect_and_configure(&config)).await?;
        info!(
            target,
            tls = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require,
            "database connected"
        );
        Ok(client)
    }

    async fn connect_and_configure(&self, config: &Config) -> Result<Client> {
        // `Prefer` goes without TLS: a verifying rustls handshake against a server with a private
        // certificate would fail where libpq's `prefer` quietly succeeds.
        let client = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let (client, connection) = config.connect(self.tls.clone()).await.map_err(tripflow::db::classify)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    warn!(error = %err, "database connection ended with an error");
                }
            });
            client
        } else {
            let (client, connection) = config.connect(NoTls).await.map_err(tripflow::db::classify)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    warn!(error = %err, "database connection ended with an error");
                }
            });
            client
        };
        tripflow::db::configure_session(&client, &self.settings).await?;
        Ok(client)
    }
}

/// Load's further COPY sessions: each a new connection, opened as the first was (secret, TLS,
/// timeouts), and closed when its share is in.
#[async_trait::async_trait]
impl tripflow::db::versions::Sessions for Database {
    async fn open(&self) -> Result<Client> {
        self.connect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:1:secret:x";

    #[test]
    fn aurora_managed_secret_needs_host_from_the_environment() {
        let creds = parse_secret(ARN, r#"{"username":"tripflow","password":"s3cret"}"#).unwrap();
        assert_eq!(creds.host, None);
        let err = secret_config(&creds, None, None, None, SslMode::Require).unwrap_err();
        assert!(err.to_string().contains("TRIPFLOW_DB_HOST"), "{err}");
        let config = secret_config(&creds, Some("db.internal"), None, None, SslMode::Require).unwrap();
        assert_eq!(config.get_ports(), &[5432]);
        assert_eq!(config.get_dbname(), Some("postgres"));
        assert_eq!(config.get_user(), Some("tripflow"));
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn environment_settings_override_the_secret_and_port_may_be_a_string() {
        let creds = parse_secret(
            ARN,
            r#"{"username":"u","password":"p","host":"cluster","port":"6432","dbname":"trips"}"#,
        )
        .unwrap();
        assert_eq!((creds.port, creds.dbname.as_deref()), (Some(6432), Some("trips")));
        let config = secret_config(&creds, Some("proxy"), Some(5433), None, SslMode::Disable).unwrap();
        assert_eq!(
            format!("{:?}", config.get_hosts()),
            format!("{:?}", Config::new().host("proxy").get_hosts())
        );
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_dbname(), Some("trips"));
        let numeric = parse_secret(ARN, r#"{"username":"u","password":"p","port":5432}"#).unwrap();
        assert_eq!(numeric.port, Some(5432));
    }

    #[test]
    fn a_secret_without_credentials_is_a_database_error_that_hides_the_secret() {
        let err = parse_secret(ARN, r#"{"password":"hunter2"}"#).unwrap_err();
        assert_eq!(err.name(), "DatabaseError");
        assert!(!err.to_string().contains("hunter2"));
        assert_eq!(parse_secret(ARN, "not json").unwrap_err().name(), "DatabaseError");
        assert!(parse_secret(ARN, r#"{"username":"u","password":"p","port":70000}"#).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_fails_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("tripflow-aws-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = tls_connector(Some(&empty)).err().unwrap();
        assert!(err.to_string().contains(ENV_DB_CA_FILE), "{err}");
        assert!(tls_connector(None).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}
