//! The ECS provider against a local AWS-compatible server (moto): the real SDK calls, the
//! task's tags and address, a task stopped from outside (a Spot interruption), and a stop.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, NetworkMode, PortMapping, ResourceRequirement, ResourceType,
};
use ferry_scaler::ecs::{EcsTasks, TaskSpec};
use ferry_scaler::{Provider, ProviderError, ReplicaId};
use serde_json::Value;

/// `moto_server` on a free port, stopped on drop.
struct Moto {
    process: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return path.into();
    }
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv/bin/moto_server"
    ));
    if venv.exists() {
        return venv;
    }
    "moto_server".into()
}

fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let process = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]', or set MOTO_SERVER)");
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        process,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// moto answers a container's `cpu` and `memory` as JSON numbers where the ECS API has
/// strings, and the Rust SDK (unlike boto3) holds to the API. The SDK talks to moto through
/// this proxy, which mends those answers and passes everything else through.
async fn mending_proxy(moto: String) -> String {
    let http = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (http, moto) = (http.clone(), moto.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let mut headers = parts.headers.clone();
            headers.remove("host");
            let answer = http
                .request(parts.method, format!("{moto}{}", parts.uri))
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, content_type) = (
                answer.status(),
                answer.headers().get("content-type").cloned(),
            );
            let mut bytes = answer.bytes().await.unwrap().to_vec();
            if let Ok(mut json) = serde_json::from_slice::<Value>(&bytes) {
                mend(&mut json);
                bytes = serde_json::to_vec(&json).unwrap();
            }
            let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
            *response.status_mut() = status;
            if let Some(content_type) = content_type {
                response.headers_mut().insert("content-type", content_type);
            }
            response
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(forward)).await });
    url
}

fn mend(json: &mut Value) {
    let tasks: Vec<&mut Value> = match json {
        Value::Object(object) => object
            .iter_mut()
            .flat_map(|(key, value)| match (key.as_str(), value) {
                ("task", task) => vec![task],
                ("tasks", Value::Array(tasks)) => tasks.iter_mut().collect(),
                _ => vec![],
            })
            .collect(),
        _ => return,
    };
    let containers = tasks
        .into_iter()
        .filter_map(|task| task["containers"].as_array_mut())
        .flatten();
    for container in containers {
        for field in ["cpu", "memory", "memoryReservation"] {
            if let Some(number) = container.get(field).and_then(Value::as_i64) {
                container[field] = Value::String(number.to_string());
            }
        }
    }
}

fn client(url: &str) -> Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .endpoint_url(url)
        .build();
    Client::from_conf(config)
}

/// One call of the EC2 query API; the first `<field>` of its answer.
async fn ec2(url: &str, params: &[(&str, &str)], field: &str) -> String {
    let body = reqwest::Client::new()
        .post(url)
        .header("Authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x")
        .form(&[params, &[("Version", "2016-11-15")]].concat())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = format!("<{field}>");
    let start = body.find(&open).expect(&body) + open.len();
    let end = start + body[start..].find('<').unwrap();
    body[start..end].to_owned()
}

async fn gpu_cluster(moto: &Moto) -> (Client, TaskSpec) {
    // moto moves a task one lifecycle state per describe by default; real tasks keep running.
    reqwest::Client::new()
        .post(format!("{}/moto-api/state-manager/set-transition", moto.url))
        .json(&serde_json::json!({"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1_000_000}}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let client = client(&mending_proxy(moto.url.clone()).await);
    let subnet = ec2(&moto.url, &[("Action", "DescribeSubnets")], "subnetId").await;
    let image = ec2(&moto.url, &[("Action", "DescribeImages")], "imageId").await;
    // A GPU instance of the cluster (an ECS-optimised GPU AMI in a real account).
    let instance = ec2(
        &moto.url,
        &[
            ("Action", "RunInstances"),
            ("ImageId", &image),
            ("InstanceType", "g5.xlarge"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("SubnetId", &subnet),
        ],
        "instanceId",
    )
    .await;
    client
        .create_cluster()
        .cluster_name("ferry-gpu")
        .send()
        .await
        .unwrap();
    client
        .register_container_instance()
        .cluster("ferry-gpu")
        .instance_identity_document(format!(
            r#"{{"instanceId": "{instance}", "region": "us-east-1"}}"#
        ))
        .send()
        .await
        .unwrap();
    client
        .register_task_definition()
        .family("ferry-worker")
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(Compatibility::Ec2)
        .cpu("1024")
        .memory("2048")
        .container_definitions(
            ContainerDefinition::builder()
                .name("worker")
                .image("registry.example.com/ferry:cuda")
                // A soft limit: moto answers a container's hard `cpu`/`memory` as numbers where
                // the API (and so the SDK) has strings.
                .memory_reservation(2048)
                .command("worker")
                .command("--addr")
                .command("0.0.0.0:8080")
                .port_mappings(PortMapping::builder().container_port(8080).build())
                .resource_requirements(
                    ResourceRequirement::builder()
                        .r#type(ResourceType::Gpu)
                        .value("1")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let spec = TaskSpec {
        cluster: "ferry-gpu".into(),
        task_definition: "ferry-worker".into(),
        capacity_provider: None,
        launch_type: None,
        subnets: vec![subnet],
        security_groups: vec![],
        port: 8080,
    };
    (client, spec)
}

async fn task_of(client: &Client, replica: ReplicaId) -> aws_sdk_ecs::types::Task {
    let arns = client
        .list_tasks()
        .cluster("ferry-gpu")
        .send()
        .await
        .unwrap();
    let described = client
        .describe_tasks()
        .cluster("ferry-gpu")
        .set_tasks(Some(arns.task_arns().to_vec()))
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap();
    described
        .tasks()
        .iter()
        .find(|task| {
            task.tags().iter().any(|tag| {
                tag.key() == Some("ferry:replica") && tag.value() == Some(&replica.to_string())
            })
        })
        .cloned()
        .expect("the replica's task")
}

#[tokio::test]
async fn replicas_are_tagged_ecs_tasks_reached_at_their_private_address() {
    let moto = start_moto();
    let (client, spec) = gpu_cluster(&moto).await;
    let tasks = EcsTasks::new(
        client.clone(),
        HashMap::from([("smollm2".to_owned(), spec)]),
        Duration::from_millis(50),
    );

    let url = tasks.start("smollm2", ReplicaId(1)).await.unwrap();
    let task = task_of(&client, ReplicaId(1)).await;
    assert_eq!(task.started_by(), Some("ferry-scaler"));
    assert_eq!(task.last_status(), Some("RUNNING"));
    assert!(
        task.tags()
            .iter()
            .any(|tag| tag.key() == Some("ferry:deployment") && tag.value() == Some("smollm2"))
    );
    let ip = task
        .attachments()
        .iter()
        .flat_map(|attachment| attachment.details())
        .find(|detail| detail.name() == Some("privateIPv4Address"))
        .and_then(|detail| detail.value())
        .unwrap();
    assert_eq!(url, format!("http://{ip}:8080"));

    assert!(matches!(
        tasks.start("nowhere", ReplicaId(9)).await,
        Err(ProviderError::UnknownDeployment(_))
    ));

    tasks.start("smollm2", ReplicaId(2)).await.unwrap();
    assert!(tasks.exited().await.is_empty(), "both run");
    // Replica 2's task is stopped from outside Ferry (a Spot interruption, an operator).
    client
        .stop_task()
        .cluster("ferry-gpu")
        .task(task_of(&client, ReplicaId(2)).await.task_arn().unwrap())
        .reason("Spot interruption")
        .send()
        .await
        .unwrap();
    assert_eq!(tasks.exited().await, vec![ReplicaId(2)]);
    assert!(tasks.exited().await.is_empty(), "reported once");

    tasks.stop(ReplicaId(1)).await;
    let stopped = task_of(&client, ReplicaId(1)).await;
    assert_eq!(stopped.last_status(), Some("STOPPED"));
    assert_eq!(
        stopped.stopped_reason(),
        Some("scaled in by Ferry after draining")
    );
    assert!(
        tasks.exited().await.is_empty(),
        "a stop Ferry asked for is not an exit"
    );
}

#[tokio::test]
async fn tasks_no_scaler_knows_are_stopped_at_start_and_others_are_left_alone() {
    let moto = start_moto();
    let (client, spec) = gpu_cluster(&moto).await;
    let specs = |names: &[&str]| {
        names
            .iter()
            .map(|name| ((*name).to_owned(), spec.clone()))
            .collect::<HashMap<_, _>>()
    };
    // An earlier scaler ran two deployments and died; another deployment is not ours.
    let earlier = EcsTasks::new(
        client.clone(),
        specs(&["smollm2", "other"]),
        Duration::from_millis(50),
    );
    earlier.start("smollm2", ReplicaId(1)).await.unwrap();
    earlier.start("other", ReplicaId(2)).await.unwrap();

    let now = EcsTasks::new(
        client.clone(),
        specs(&["smollm2"]),
        Duration::from_millis(50),
    );
    now.start("smollm2", ReplicaId(7)).await.unwrap();
    assert_eq!(now.stop_strays().await, 1);
    assert_eq!(
        task_of(&client, ReplicaId(1)).await.last_status(),
        Some("STOPPED")
    );
    assert_eq!(
        task_of(&client, ReplicaId(2)).await.last_status(),
        Some("RUNNING"),
        "not this pool's deployment"
    );
    assert_eq!(
        task_of(&client, ReplicaId(7)).await.last_status(),
        Some("RUNNING"),
        "its own replica"
    );
    assert_eq!(now.stop_strays().await, 0);
}
