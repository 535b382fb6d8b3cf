//! Starting a worker: resolve model sources, check the models fit a device, load them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::device::{self, DeviceInfo, DeviceKind, PlacementError};
use crate::embed::{EmbedError, EmbeddingEngine};
use crate::llama::GgufFile;
use crate::native::{BatchingConfig, NativeEngine, NativeLoadError};
use crate::server::{ChatModel, EmbeddingModel, WorkerModels};
use crate::source::{self, ModelKind, PullOptions, SourceError};

/// A model to serve: a catalog name (pulled on demand), a `.gguf` file, or a directory in the
/// Hugging Face layout (`config.json`, `tokenizer.json`, `model.safetensors`).
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// The name callers use in `model`.
    pub id: String,
    pub source: String,
    /// Checked against the file before loading, for local files.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub chat: Option<ModelRef>,
    pub embedding: Option<ModelRef>,
    pub batching: BatchingConfig,
    pub pull: PullOptions,
    /// Caps the memory placement may assume free (for tests, and to share a machine).
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{model}: {error}")]
    Placement {
        model: String,
        error: PlacementError,
    },
    #[error("{model}: {error}")]
    Chat {
        model: String,
        error: NativeLoadError,
    },
    #[error("{model}: {error}")]
    Embedding { model: String, error: EmbedError },
    #[error("{0} is not a {1} model")]
    Kind(String, &'static str),
    #[error("{model}: cannot use the device: {error}")]
    Device {
        model: String,
        error: candle_core::Error,
    },
}

/// Resolves a model reference to the path an engine loads.
pub fn resolve(
    model: &ModelRef,
    kind: ModelKind,
    pull: &PullOptions,
) -> Result<PathBuf, WorkerError> {
    let expected = match kind {
        ModelKind::Chat => "chat",
        ModelKind::Embedding => "embedding",
    };
    if let Some(entry) = source::find(&model.source) {
        if entry.kind != kind {
            return Err(WorkerError::Kind(model.source.clone(), expected));
        }
        return Ok(source::pull(entry, pull)?);
    }
    let path = PathBuf::from(&model.source);
    if !path.exists() {
        return Err(SourceError::Unknown(model.source.clone()).into());
    }
    if let Some(sha256) = &model.sha256 {
        source::verify(&path, sha256)?;
    }
    Ok(path)
}

fn devices(config: &WorkerConfig) -> Vec<DeviceInfo> {
    let mut devices = device::inventory();
    if let Some(limit) = config.memory_limit_bytes {
        for device in &mut devices {
            device.free_bytes = device.free_bytes.min(limit);
        }
    }
    devices
}

/// KV room reserved per sequence when placing a chat model.
const KV_RESERVE_TOKENS: usize = 2048;

pub fn load(config: &WorkerConfig) -> Result<WorkerModels, WorkerError> {
    let mut devices = devices(config);
    let mut models = WorkerModels::default();
    if let Some(chat) = &config.chat {
        let path = resolve(chat, ModelKind::Chat, &config.pull)?;
        let failed = |error: NativeLoadError| WorkerError::Chat {
            model: chat.id.clone(),
            error,
        };
        let need = GgufFile::open(&path)
            .map_err(|error| failed(error.into()))?
            .memory_estimate(config.batching.max_batch, KV_RESERVE_TOKENS);
        let device = place(&chat.id, need, &mut devices)?;
        let engine = NativeEngine::load(&path, &device, config.batching.clone()).map_err(failed)?;
        models.chat = Some(Arc::new(ChatModel {
            id: chat.id.clone(),
            engine: Arc::new(engine),
        }));
    }
    if let Some(embedding) = &config.embedding {
        let path = resolve(embedding, ModelKind::Embedding, &config.pull)?;
        // Safetensors weights load as they are; twice their size covers activations.
        let device = place(&embedding.id, directory_size(&path) * 2, &mut devices)?;
        let engine =
            EmbeddingEngine::load(&path, &device).map_err(|error| WorkerError::Embedding {
                model: embedding.id.clone(),
                error,
            })?;
        models.embedding = Some(Arc::new(EmbeddingModel {
            id: embedding.id.clone(),
            engine: Arc::new(engine),
        }));
    }
    Ok(models)
}

/// Picks a device for `need` bytes and books them there, so the next model placed on the
/// same inventory sees what is really left.
fn place(
    model: &str,
    need: u64,
    devices: &mut [DeviceInfo],
) -> Result<candle_core::Device, WorkerError> {
    let placed = device::place(need, devices, cfg!(feature = "cuda")).map_err(|error| {
        WorkerError::Placement {
            model: model.to_owned(),
            error,
        }
    })?;
    log_placement(model, &placed, need);
    if let Some(booked) = devices.iter_mut().find(|device| device.kind == placed.kind) {
        booked.free_bytes = booked.free_bytes.saturating_sub(need);
    }
    device::candle_device(placed.kind).map_err(|error| WorkerError::Device {
        model: model.to_owned(),
        error,
    })
}

fn log_placement(model: &str, device: &DeviceInfo, need: u64) {
    let where_ = match device.kind {
        DeviceKind::Cpu => "cpu".to_owned(),
        DeviceKind::Cuda(ordinal) => format!("cuda:{ordinal} ({})", device.name),
    };
    tracing::info!(model, device = %where_, need_mib = need >> 20, free_mib = device.free_bytes >> 20, "placing model");
}

fn directory_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}
