//! The pool on Kubernetes with Knative: one Knative Service per deployment, whose pods are
//! `ferry worker` replicas on GPU nodes. Knative's activator plays the part of Ferry's here
//! (it buffers calls while the revision scales from zero) and its autoscaler scales on
//! concurrency, so this maps Ferry's knobs onto Knative's: the batch is the hard concurrency
//! limit, Ferry's 90 % target utilisation, its 45 s window and its scale-to-zero grace.

use std::fmt::Write as _;

/// One deployment of the pool, as a Knative Service.
#[derive(Debug, Clone)]
pub struct KnativeDeployment {
    /// The Service's name, and so its in-cluster host name.
    pub name: String,
    pub namespace: String,
    /// An image whose entry point is the `ferry` binary.
    pub image: String,
    /// `--chat-model` (a catalog name, or a path inside the image or a mounted volume).
    pub chat_model: String,
    /// `--embedding-model`; `none` serves none.
    pub embedding_model: String,
    pub max_batch: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// GPUs per replica (`nvidia.com/gpu`); 0 runs on CPU nodes.
    pub gpus: u32,
    /// Node labels a replica must land on (e.g. `nvidia.com/gpu.product`).
    pub node_selector: Vec<(String, String)>,
    pub memory: String,
    pub cpu: String,
    pub stable_window_seconds: u32,
    pub scale_to_zero_grace_seconds: u32,
    /// How long a call may wait for a replica, a cold start included.
    pub response_start_timeout_seconds: u32,
}

impl KnativeDeployment {
    /// The URL to register as the model deployment's upstream.
    pub fn upstream_url(&self) -> String {
        format!(
            "http://{}.{}.svc.cluster.local/v1",
            self.name, self.namespace
        )
    }

    /// The Service as YAML, with a header saying how it was made.
    pub fn to_yaml(&self) -> String {
        let mut yaml = String::new();
        let target = (f64::from(self.max_batch) * 0.9).floor().max(1.0);
        let quote = |value: &str| serde_json::to_string(value).unwrap_or_default();
        let args = [
            "worker",
            "--addr",
            "0.0.0.0:8080",
            "--chat-model",
            &self.chat_model,
            "--embedding-model",
            &self.embedding_model,
            "--max-batch",
            &self.max_batch.to_string(),
            "--data-dir",
            "/data",
        ]
        .iter()
        .map(|arg| quote(arg))
        .collect::<Vec<_>>()
        .join(", ");
        let _ = writeln!(
            yaml,
            "# A Ferry GPU-pool deployment on Knative; register it as a model deployment with\n\
             # upstream url {url}\n\
             # Needs Knative Serving's features kubernetes.podspec-nodeselector and\n\
             # kubernetes.podspec-tolerations, and allow-zero-initial-scale in config-autoscaler.\n\
             apiVersion: serving.knative.dev/v1\n\
             kind: Service\n\
             metadata:\n  \
               name: {name}\n  \
               namespace: {namespace}\n  \
               labels:\n    \
                 app.kubernetes.io/part-of: ferry\n    \
                 app.kubernetes.io/component: gpu-pool\n\
             spec:\n  \
               template:\n    \
                 metadata:\n      \
                   annotations:\n        \
                     autoscaling.knative.dev/class: kpa.autoscaling.knative.dev\n        \
                     autoscaling.knative.dev/metric: concurrency\n        \
                     autoscaling.knative.dev/min-scale: \"{min}\"\n        \
                     autoscaling.knative.dev/max-scale: \"{max}\"\n        \
                     autoscaling.knative.dev/initial-scale: \"{min}\"\n        \
                     autoscaling.knative.dev/target: \"{target}\"\n        \
                     autoscaling.knative.dev/target-utilization-percentage: \"100\"\n        \
                     autoscaling.knative.dev/window: \"{window}s\"\n        \
                     autoscaling.knative.dev/scale-to-zero-pod-retention-period: \"{grace}s\"\n    \
                 spec:\n      \
                   # The batch: Knative queues the rest in its activator and queue-proxy.\n      \
                   containerConcurrency: {batch}\n      \
                   timeoutSeconds: 3600\n      \
                   responseStartTimeoutSeconds: {start}",
            url = self.upstream_url(),
            name = self.name,
            namespace = self.namespace,
            min = self.min_replicas,
            max = self.max_replicas,
            window = self.stable_window_seconds.max(6),
            grace = self.scale_to_zero_grace_seconds,
            batch = self.max_batch,
            start = self.response_start_timeout_seconds,
        );
        if !self.node_selector.is_empty() {
            yaml.push_str("      nodeSelector:\n");
            for (label, value) in &self.node_selector {
                let _ = writeln!(yaml, "        {label}: {}", quote(value));
            }
        }
        if self.gpus > 0 {
            yaml.push_str(
                "      tolerations:\n        \
                 - key: nvidia.com/gpu\n          \
                   operator: Exists\n          \
                   effect: NoSchedule\n",
            );
        }
        let _ = writeln!(
            yaml,
            "      containers:\n        \
             - name: worker\n          \
               image: {image}\n          \
               args: [{args}]\n          \
               ports:\n            \
                 - name: http1\n              \
                   containerPort: 8080\n          \
               env:\n            \
                 - name: FERRY_MODELS_DIR\n              \
                   value: /data/models\n          \
               readinessProbe:\n            \
                 httpGet:\n              \
                   path: /readyz\n            \
                 periodSeconds: 1\n          \
               resources:\n            \
                 requests:\n              \
                   cpu: {cpu}\n              \
                   memory: {memory}\n            \
                 limits:\n              \
                   memory: {memory}",
            image = quote(&self.image),
            cpu = quote(&self.cpu),
            memory = quote(&self.memory),
        );
        if self.gpus > 0 {
            let _ = writeln!(yaml, "              nvidia.com/gpu: \"{}\"", self.gpus);
        }
        yaml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> KnativeDeployment {
        KnativeDeployment {
            name: "ferry-pool-smollm2".into(),
            namespace: "ferry".into(),
            image: "registry.example.com/ferry:latest".into(),
            chat_model: "smollm2-135m-instruct".into(),
            embedding_model: "none".into(),
            max_batch: 16,
            min_replicas: 0,
            max_replicas: 4,
            gpus: 1,
            node_selector: vec![(
                "nvidia.com/gpu.product".into(),
                "NVIDIA-H100-80GB-HBM3".into(),
            )],
            memory: "32Gi".into(),
            cpu: "4".into(),
            stable_window_seconds: 45,
            scale_to_zero_grace_seconds: 30,
            response_start_timeout_seconds: 600,
        }
    }

    #[test]
    fn scales_from_zero_on_gpu_nodes_with_the_batch_as_its_concurrency() {
        let yaml = example().to_yaml();
        for expected in [
            "autoscaling.knative.dev/min-scale: \"0\"",
            "autoscaling.knative.dev/max-scale: \"4\"",
            "autoscaling.knative.dev/target: \"14\"",
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period: \"30s\"",
            "containerConcurrency: 16",
            "nvidia.com/gpu.product: \"NVIDIA-H100-80GB-HBM3\"",
            "nvidia.com/gpu: \"1\"",
            "path: /readyz",
            "args: [\"worker\", \"--addr\", \"0.0.0.0:8080\"",
        ] {
            assert!(yaml.contains(expected), "{expected} missing from\n{yaml}");
        }
        let cpu = KnativeDeployment {
            gpus: 0,
            node_selector: vec![],
            ..example()
        }
        .to_yaml();
        assert!(!cpu.contains("nvidia.com/gpu"), "{cpu}");
    }

    #[test]
    fn the_checked_in_example_is_what_the_generator_makes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../knative/pool/smollm2.yaml"
        );
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            checked_in,
            example().to_yaml(),
            "regenerate with the command in knative/README.md"
        );
    }
}
