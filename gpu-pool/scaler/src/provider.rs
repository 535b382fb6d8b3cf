//! Replica providers: what makes and removes a deployment's replicas.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ReplicaId(pub u64);

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no such deployment: {0}")]
    UnknownDeployment(String),
    #[error("could not start a replica: {0}")]
    Start(String),
    #[error("the replica did not become ready within {0:?}")]
    NotReady(Duration),
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Starts replica `id` of `deployment`; returns its base URL once it runs. The pool then
    /// waits for its `/readyz` (and stops it if that never comes).
    async fn start(&self, deployment: &str, id: ReplicaId) -> Result<String, ProviderError>;
    /// Stops a replica that has nothing in flight, and waits until it is gone.
    async fn stop(&self, id: ReplicaId);
    /// Replicas that ended without being asked to, since the last call.
    async fn exited(&self) -> Vec<ReplicaId>;
}

/// How to run one deployment's replicas as local processes.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    /// Arguments of `ferry worker` (or any program that prints `listening on http://ADDR`
    /// once it serves, and serves `GET /readyz`).
    pub args: Vec<String>,
    /// Set in its environment, beside what it inherits.
    pub env: Vec<(String, String)>,
}

/// Replicas as child processes of this one (`ferry worker`), each on its own loopback port.
///
/// A replica's stdin is a pipe it watches (`--exit-with-stdin`): closing it is the polite stop,
/// and if this process dies however it dies, the pipe closes and the workers go too.
#[derive(Debug)]
pub struct LocalProcesses {
    specs: HashMap<String, ProcessSpec>,
    children: Mutex<HashMap<ReplicaId, Child>>,
}

/// How long a stopped worker gets to finish before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl LocalProcesses {
    pub fn new(specs: HashMap<String, ProcessSpec>) -> LocalProcesses {
        LocalProcesses {
            specs,
            children: Mutex::new(HashMap::new()),
        }
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, Child>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The URL it prints once it serves (`listening on http://ADDR`).
    async fn listening_url(
        &self,
        id: ReplicaId,
        stdout: tokio::process::ChildStdout,
    ) -> Result<String, ProviderError> {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|error| ProviderError::Start(error.to_string()))?;
            let Some(line) = line else {
                let status = self
                    .children()
                    .remove(&id)
                    .map(|mut child| child.try_wait());
                return Err(ProviderError::Start(format!(
                    "the worker exited while loading ({status:?})"
                )));
            };
            if let Some(at) = line.find("listening on ") {
                let url = line[at + "listening on ".len()..].trim().to_owned();
                // The rest of its stdout is not ours to keep, but it must not fill the pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(url);
            }
        }
    }
}

#[async_trait]
impl Provider for LocalProcesses {
    async fn start(&self, deployment: &str, id: ReplicaId) -> Result<String, ProviderError> {
        let spec = self
            .specs
            .get(deployment)
            .ok_or_else(|| ProviderError::UnknownDeployment(deployment.to_owned()))?;
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                ProviderError::Start(format!("{}: {error}", spec.program.display()))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ProviderError::Start("no stdout".into()))?;
        tracing::debug!(deployment, replica = %id, pid = ?child.id(), "worker process spawned");
        self.children().insert(id, child);
        let url = self.listening_url(id, stdout).await;
        if url.is_err() {
            self.stop(id).await;
        }
        url
    }

    async fn stop(&self, id: ReplicaId) {
        let Some(mut child) = self.children().remove(&id) else {
            return;
        };
        drop(child.stdin.take());
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(replica = %id, "worker did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }

    async fn exited(&self) -> Vec<ReplicaId> {
        let mut children = self.children();
        let ended: Vec<ReplicaId> = children
            .iter_mut()
            .filter_map(|(id, child)| (!matches!(child.try_wait(), Ok(None))).then_some(*id))
            .collect();
        for id in &ended {
            if let Some(mut child) = children.remove(id) {
                tracing::warn!(replica = %id, status = ?child.try_wait(), "worker process ended on its own");
            }
        }
        ended
    }
}
