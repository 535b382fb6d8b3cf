//! One moto server per test process, started on first use, and clients for it.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use ferry_aws::DynamoStore;

/// The Python that has moto: beside `MOTO_SERVER` if set, else the repository's `.venv`.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path).with_file_name("python");
    }
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv/bin/python"
    ));
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// The server's URL. It lives as long as this process: the shell that runs it waits on its
/// stdin, which closes when the test process exits, however it exits, and then stops moto.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let script = format!(
            "'{}' '{}' 127.0.0.1 {port} >/dev/null 2>&1 & moto=$!; cat >/dev/null; kill $moto",
            python().display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto/serial_moto.py"),
        );
        let mut shell = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        // Keep the write end open for the life of the process (never written to).
        let stdin = shell.stdin.take().expect("stdin");
        std::mem::forget(stdin);
        std::mem::forget(shell);
        let until = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "moto did not start (pip install 'moto[server]' into .venv, or set MOTO_SERVER)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::io::stderr().flush();
        format!("http://127.0.0.1:{port}")
    })
}

pub fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::for_tests(),
        ))
        .build()
}

pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A store on a new, empty table.
pub async fn fresh_store() -> DynamoStore {
    let client = aws_sdk_dynamodb::Client::new(&sdk_config());
    let store = DynamoStore::new(client, unique("ferry"));
    store.create_table().await.expect("create the table");
    store
}
