//! The AWS provider: each replica is an ECS task (`ferry worker` in a container), run on
//! the cluster's GPU container instances (EC2 launch type or a capacity provider backed by a
//! GPU Auto Scaling group) in `awsvpc` mode, and reached at its own private address.
//!
//! Why tasks rather than a service's desired count: the pool decides which replica goes
//! (the least busy, once drained); a service scaled in would stop a task of its choosing,
//! streams and all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, LaunchType,
    NetworkConfiguration, Tag, Task,
};

use crate::provider::{Provider, ProviderError, ReplicaId};

/// How to run one deployment's replicas as ECS tasks.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub cluster: String,
    /// Family, family:revision or ARN; its container runs `ferry worker --addr 0.0.0.0:PORT`
    /// and reserves a GPU (`resourceRequirements: [{type: GPU, value: "1"}]`).
    pub task_definition: String,
    /// A capacity provider (a GPU Auto Scaling group that scales with the tasks); without
    /// one, the EC2 launch type on instances already in the cluster.
    pub capacity_provider: Option<String>,
    pub launch_type: Option<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// The port the worker listens on inside the task.
    pub port: u16,
}

#[derive(Debug)]
pub struct EcsTasks {
    client: Client,
    specs: HashMap<String, TaskSpec>,
    /// Replica → (cluster, task ARN).
    tasks: Mutex<HashMap<ReplicaId, (String, String)>>,
    poll: Duration,
}

/// Tags every task carries, so an operator (or a restarted pool) can find Ferry's tasks.
const DEPLOYMENT_TAG: &str = "ferry:deployment";
const REPLICA_TAG: &str = "ferry:replica";

impl EcsTasks {
    pub fn new(client: Client, specs: HashMap<String, TaskSpec>, poll: Duration) -> EcsTasks {
        EcsTasks {
            client,
            specs,
            tasks: Mutex::new(HashMap::new()),
            poll,
        }
    }

    /// With the AWS configuration of the environment (region, credentials, endpoint).
    pub async fn from_env(specs: HashMap<String, TaskSpec>) -> EcsTasks {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        EcsTasks::new(Client::new(&config), specs, Duration::from_secs(2))
    }

    /// Stops tasks of this pool's deployments that no replica here knows: left by an earlier
    /// scaler that died, or started by a RunTask whose start timed out. Run it before the
    /// pool starts. Returns how many were stopped.
    pub async fn stop_strays(&self) -> usize {
        let known: Vec<String> = self.tasks().values().map(|(_, arn)| arn.clone()).collect();
        let mut clusters: Vec<&str> = self
            .specs
            .values()
            .map(|spec| spec.cluster.as_str())
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        let mut stopped = 0;
        for cluster in clusters {
            let listed = self
                .client
                .list_tasks()
                .cluster(cluster)
                .started_by("ferry-scaler")
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<String>, _>>()
                .await;
            let arns: Vec<String> = match listed {
                Ok(arns) => arns
                    .into_iter()
                    .filter(|arn| !known.contains(arn))
                    .collect(),
                Err(error) => {
                    tracing::warn!(%cluster, error = %aws_sdk_ecs::error::DisplayErrorContext(error), "could not list ECS tasks");
                    continue;
                }
            };
            for batch in arns.chunks(100) {
                let described = self
                    .client
                    .describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(batch.to_vec()))
                    .include(aws_sdk_ecs::types::TaskField::Tags)
                    .send()
                    .await;
                let Ok(described) = described else { continue };
                for task in described.tasks() {
                    let ours = task.tags().iter().any(|tag| {
                        tag.key() == Some(DEPLOYMENT_TAG)
                            && tag
                                .value()
                                .is_some_and(|name| self.specs.contains_key(name))
                    });
                    let (Some(arn), false) = (task.task_arn(), ended(task)) else {
                        continue;
                    };
                    if !ours {
                        continue;
                    }
                    let result = self
                        .client
                        .stop_task()
                        .cluster(cluster)
                        .task(arn)
                        .reason("a Ferry replica no scaler knows")
                        .send()
                        .await;
                    match result {
                        Ok(_) => {
                            tracing::warn!(task = %arn, "stopped a stray ECS task");
                            stopped += 1;
                        }
                        Err(error) => {
                            tracing::warn!(task = %arn, error = %aws_sdk_ecs::error::DisplayErrorContext(error), "could not stop a stray ECS task")
                        }
                    }
                }
            }
        }
        stopped
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, (String, String)>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn describe(&self, cluster: &str, arns: Vec<String>) -> Result<Vec<Task>, String> {
        let described = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .map_err(|error| aws_sdk_ecs::error::DisplayErrorContext(error).to_string())?;
        Ok(described.tasks().to_vec())
    }
}

/// A task that is going or gone.
fn ended(task: &Task) -> bool {
    matches!(
        task.last_status(),
        Some("DEACTIVATING" | "STOPPING" | "DEPROVISIONING" | "STOPPED" | "DELETED")
    )
}

/// The private address of an `awsvpc` task's network interface.
fn private_ip(task: &Task) -> Option<String> {
    task.attachments()
        .iter()
        .flat_map(|attachment| attachment.details())
        .find(|detail| detail.name() == Some("privateIPv4Address"))
        .and_then(|detail| detail.value())
        .map(str::to_owned)
}

#[async_trait]
impl Provider for EcsTasks {
    async fn start(&self, deployment: &str, id: ReplicaId) -> Result<String, ProviderError> {
        let spec = self
            .specs
            .get(deployment)
            .ok_or_else(|| ProviderError::UnknownDeployment(deployment.to_owned()))?;
        let network = AwsVpcConfiguration::builder()
            .set_subnets(Some(spec.subnets.clone()))
            .set_security_groups(Some(spec.security_groups.clone()))
            .assign_public_ip(AssignPublicIp::Disabled)
            .build()
            .map_err(|error| ProviderError::Start(error.to_string()))?;
        let tag = |key: &str, value: String| Tag::builder().key(key).value(value).build();
        let mut request = self
            .client
            .run_task()
            .cluster(&spec.cluster)
            .task_definition(&spec.task_definition)
            .count(1)
            .started_by("ferry-scaler")
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(network)
                    .build(),
            )
            .tags(tag(DEPLOYMENT_TAG, deployment.to_owned()))
            .tags(tag(REPLICA_TAG, id.to_string()));
        request = match (&spec.capacity_provider, &spec.launch_type) {
            (Some(provider), _) => request.capacity_provider_strategy(
                CapacityProviderStrategyItem::builder()
                    .capacity_provider(provider)
                    .weight(1)
                    .build()
                    .map_err(|error| ProviderError::Start(error.to_string()))?,
            ),
            (None, Some(launch_type)) => {
                request.launch_type(LaunchType::from(launch_type.as_str()))
            }
            (None, None) => request.launch_type(LaunchType::Ec2),
        };
        let ran = request.send().await.map_err(|error| {
            ProviderError::Start(aws_sdk_ecs::error::DisplayErrorContext(error).to_string())
        })?;
        let Some(arn) = ran.tasks().first().and_then(|task| task.task_arn()) else {
            let reasons: Vec<String> = ran
                .failures()
                .iter()
                .map(|failure| format!("{:?}: {:?}", failure.arn(), failure.reason()))
                .collect();
            return Err(ProviderError::Start(format!(
                "ECS placed no task: {}",
                reasons.join("; ")
            )));
        };
        let arn = arn.to_owned();
        self.tasks().insert(id, (spec.cluster.clone(), arn.clone()));
        // Provisioning (an instance from the capacity provider, the image, the ENI) takes a
        // while; the pool bounds the whole start.
        loop {
            // A failed describe (throttling, a blip) is asked again; the pool bounds the wait.
            let described = self
                .describe(&spec.cluster, vec![arn.clone()])
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(task = %arn, %error, "could not describe a starting ECS task");
                    Vec::new()
                });
            if let Some(task) = described.first() {
                if ended(task) {
                    return Err(ProviderError::Start(format!(
                        "task {arn} stopped while starting: {}",
                        task.stopped_reason().unwrap_or("no reason given")
                    )));
                }
                if task.last_status() == Some("RUNNING")
                    && let Some(ip) = private_ip(task)
                {
                    return Ok(format!("http://{ip}:{}", spec.port));
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn stop(&self, id: ReplicaId) {
        let Some((cluster, arn)) = self.tasks().remove(&id) else {
            return;
        };
        let stopped = self
            .client
            .stop_task()
            .cluster(cluster)
            .task(&arn)
            .reason("scaled in by Ferry after draining")
            .send()
            .await;
        if let Err(error) = stopped {
            tracing::warn!(task = %arn, error = %aws_sdk_ecs::error::DisplayErrorContext(error), "could not stop an ECS task");
        }
    }

    async fn exited(&self) -> Vec<ReplicaId> {
        let known: Vec<(ReplicaId, String, String)> = self
            .tasks()
            .iter()
            .map(|(id, (cluster, arn))| (*id, cluster.clone(), arn.clone()))
            .collect();
        let mut by_cluster: HashMap<String, Vec<(ReplicaId, String)>> = HashMap::new();
        for (id, cluster, arn) in known {
            by_cluster.entry(cluster).or_default().push((id, arn));
        }
        let mut gone = Vec::new();
        for (cluster, replicas) in by_cluster {
            // DescribeTasks takes up to 100 tasks a call.
            for batch in replicas.chunks(100) {
                let arns = batch.iter().map(|(_, arn)| arn.clone()).collect();
                let described = match self.describe(&cluster, arns).await {
                    Ok(described) => described,
                    Err(error) => {
                        tracing::warn!(%cluster, %error, "could not describe ECS tasks");
                        continue;
                    }
                };
                for (id, arn) in batch {
                    // Only a task seen ending counts: one not found may be one ECS has not
                    // listed yet (its API is eventually consistent), and forgetting it would
                    // leave it running unstopped.
                    let task = described
                        .iter()
                        .find(|task| task.task_arn() == Some(arn.as_str()));
                    if let Some(task) = task.filter(|task| ended(task)) {
                        tracing::warn!(task = %arn, reason = ?task.stopped_reason(), "ECS task ended");
                        gone.push(*id);
                    }
                }
            }
        }
        let mut tasks = self.tasks();
        for id in &gone {
            tasks.remove(id);
        }
        gone
    }
}
