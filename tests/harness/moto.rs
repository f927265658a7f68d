//! moto in server mode: a real S3, Glue and Step Functions API on localhost, one server per test.
//!
//! The server comes from the workspace's own virtualenv (`.venv`, git-ignored), created and filled
//! with `moto[server]>=5.2.5` on first use: the machine's global moto is older and has the Step
//! Functions bug that version fixes. Set `TRIPFLOW_MOTO_SERVER` to a `moto_server` executable to use
//! another one. Each [`Moto`] listens on a free port and is killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};

/// The oldest moto whose Step Functions can start a second execution (see shared/local-aws.md).
const MOTO_REQUIREMENT: &str = "moto[server]>=5.2.5";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const REGION: &str = "us-east-1";
/// moto accepts any credentials; these say where they came from when one shows up in a log.
const FAKE_KEY: &str = "testing";

/// The workspace root (`tests/..`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `moto_server` to run, installing it into `.venv` the first time. Creating the venv is
/// serialised across test processes with a lock file, and done once per process.
pub fn moto_server_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(given) = std::env::var_os("TRIPFLOW_MOTO_SERVER") {
            return PathBuf::from(given);
        }
        let venv = workspace_root().join(".venv");
        let server = venv.join("bin/moto_server");
        let lock_path = std::env::temp_dir().join("tripflow-moto-venv.lock");
        let lock = std::fs::File::create(&lock_path).expect("create the venv lock file");
        lock.lock().expect("lock the venv lock file");
        if !server.is_file() || !venv_has_moto(&venv) {
            eprintln!("installing {MOTO_REQUIREMENT} into {} (once)", venv.display());
            if !venv.join("bin/python").is_file() {
                run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
            }
            run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", MOTO_REQUIREMENT]));
        }
        drop(lock);
        server
    })
    .clone()
}

/// Whether the venv's moto is new enough.
fn venv_has_moto(venv: &Path) -> bool {
    let check = "import moto, sys; v = tuple(int(p) for p in moto.__version__.split('.')[:3]); sys.exit(0 if v >= (5, 2, 5) else 1)";
    Command::new(venv.join("bin/python"))
        .args(["-c", check])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed with {status}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts a fresh server and waits until it answers.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts a server with extra environment (`MOTO_PORT=<router port>` for a Lambda router).
    ///
    /// The free port is found by binding and releasing it, so another process (a test's PostgreSQL)
    /// can take it before moto binds: moto then exits, and we try again on another port.
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        const ATTEMPTS: usize = 5;
        let server = moto_server_path();
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tripflow-moto-")
                .tempdir()
                .expect("temp dir");
            let log = dir.path().join("moto.log");
            let log_file = std::fs::File::create(&log).expect("moto log file");
            let port = free_port();
            let child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
            let mut moto = Moto {
                child,
                port,
                log,
                _dir: dir,
            };
            if moto.wait_until_ready() {
                return moto;
            }
            last_log = moto.log_text();
        }
        panic!("moto_server did not start in {ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// True once moto itself answers HTTP on its port (not merely something listening there);
    /// false if the process exited first (port taken).
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.answers_http() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within {STARTUP_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_http(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
    }

    /// What the server logged so far (every request, and any traceback).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration that talks to this server: fake credentials, `us-east-1`, its endpoint.
    /// Build S3 clients with [`Moto::s3_client`] (or `tripflow_aws::s3::s3_client`) to get
    /// path-style addressing.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(FAKE_KEY, FAKE_KEY, None, None, "moto"))
            .endpoint_url(self.endpoint())
            .load()
            .await
    }

    /// A path-style S3 client for this server.
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        tripflow_aws::s3::s3_client(&self.sdk_config().await, &tripflow_aws::s3::S3Timeouts::default())
    }

    /// Creates `bucket`, optionally with versioning on (so events carry version ids).
    pub async fn create_bucket(&self, bucket: &str, versioned: bool) -> aws_sdk_s3::Client {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let s3 = self.s3_client().await;
        s3.create_bucket().bucket(bucket).send().await.expect("create bucket");
        if versioned {
            s3.put_bucket_versioning()
                .bucket(bucket)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .expect("enable versioning");
        }
        s3
    }

    /// Makes Step Functions really execute state machines. Off by default in moto, and only honoured
    /// for state machines created afterwards.
    pub async fn enable_state_machine_execution(&self) {
        self.post_moto_api(
            "/moto-api/config",
            r#"{"stepfunctions":{"execute_state_machine":true}}"#,
        )
        .await;
    }

    /// Makes Glue crawls take `seconds` (they finish at once by default).
    pub async fn set_crawl_duration(&self, seconds: u32) {
        let body =
            format!(r#"{{"model_name":"glue::crawl","transition":{{"progression":"time","seconds":{seconds}}}}}"#);
        self.post_moto_api("/moto-api/state-manager/set-transition", &body)
            .await;
    }

    async fn post_moto_api(&self, path: &str, body: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.endpoint()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert!(
            response.status().is_success(),
            "POST {path}: HTTP {}",
            response.status()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
