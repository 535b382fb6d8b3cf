//! A llama-family decoder over quantized GGUF weights, built for continuous batching: each
//! sequence owns its KV cache, prompts are prefilled one sequence at a time, and a decoding
//! step advances many sequences at once so every weight matrix is read once per step for the
//! whole batch (the dominant cost on CPU and GPU alike).

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub context_length: usize,
    pub vocab_size: usize,
}

struct Layer {
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    gate: Weight,
    down: Weight,
    up: Weight,
    attn_norm: Tensor,
    ffn_norm: Tensor,
}

/// Prompt tokens per prefill pass: bounds the attention matrix of a long prompt.
const PREFILL_CHUNK: usize = 512;

pub struct Llama {
    pub config: LlamaConfig,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Weight,
    cos: Tensor,
    sin: Tensor,
    rms_eps: f32,
    device: Device,
}

/// One sequence's keys and values, per layer, shaped `[1, n_kv_head, len, head_dim]`.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the model file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid GGUF model file: {0}")]
    Format(String),
    #[error("the model file lacks `{0}`")]
    Missing(String),
    #[error("unsupported architecture `{0}`: this engine runs llama-family models")]
    Architecture(String),
}

fn format_error(error: candle_core::Error) -> LoadError {
    LoadError::Format(error.to_string())
}

/// The parsed header of a GGUF file and a reader over its bytes.
pub struct GgufFile {
    pub content: Content,
    map: memmap2::Mmap,
}

impl GgufFile {
    /// Maps the file into memory and parses its header; tensors are read from the mapping.
    pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the mapping is read-only and lives as long as `GgufFile`; model files are not
        // modified while served (the cache writes new files and renames them into place).
        #[expect(
            unsafe_code,
            reason = "memory-mapping the weights file; see the SAFETY note"
        )]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let content = Content::read(&mut std::io::Cursor::new(&map[..])).map_err(format_error)?;
        Ok(GgufFile { content, map })
    }

    /// Memory the loaded model needs with hybrid weights: the (widened) quantized weights,
    /// their f32 copy, the dequantized embedding table, and KV cache for `max_batch`
    /// sequences of `kv_tokens` each.
    pub fn memory_estimate(&self, max_batch: usize, kv_tokens: usize) -> u64 {
        let weights = self.map.len() as u64;
        let count = |key: &str| self.number(&format!("llama.{key}")).unwrap_or(0.0) as u64;
        let (layers, hidden, heads) = (
            count("block_count"),
            count("embedding_length"),
            count("attention.head_count").max(1),
        );
        let kv_heads = count("attention.head_count_kv").max(1);
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map_or(0, |info| {
                info.shape.dims().first().copied().unwrap_or(0) as u64
            });
        let embeddings = vocab * hidden * 4;
        let elements: u64 = self
            .content
            .tensor_infos
            .values()
            .map(|info| info.shape.elem_count() as u64)
            .sum();
        // Q8_0 takes 34 bytes per 32 weights; f32 takes 4 bytes per weight.
        let weights = weights.max(elements * 34 / 32) + elements * 4;
        let kv_per_token = layers * 2 * kv_heads * (hidden / heads) * 4;
        weights + embeddings + kv_per_token * (max_batch * kv_tokens) as u64
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor, LoadError> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(LoadError::Missing(name.to_owned()));
        }
        self.content
            .tensor(&mut std::io::Cursor::new(&self.map[..]), name, device)
            .map_err(format_error)
    }

    fn number(&self, key: &str) -> Result<f64, LoadError> {
        let value = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| LoadError::Missing(key.to_owned()))?;
        value
            .to_u32()
            .map(f64::from)
            .or_else(|_| value.to_f32().map(f64::from))
            .or_else(|_| value.to_u64().map(|value| value as f64))
            .map_err(|_| LoadError::Format(format!("`{key}` is not a number")))
    }
}

/// How weight matrices are held in memory for the matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As stored in the file.
    Native,
    /// Block formats without fast CPU kernels in candle (Q4_1, Q5_0, Q5_1) are widened to
    /// Q8_0, which has them; others stay as stored.
    FastQuantized,
    /// Dequantized to f32: dense GEMM, fast for prefill and large batches, 4 bytes a weight.
    F32,
    /// Both `FastQuantized` and `F32`: dense GEMM for prefill (many rows, where arithmetic
    /// wins), the quantized kernels for decoding (where reading fewer bytes wins). Costs the
    /// f32 copy in memory.
    Hybrid,
}

/// Which kind of pass a matmul serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Many tokens of one sequence: dense GEMM wins where a dense copy exists.
    Prefill,
    /// One token per sequence: always the quantized kernels, row by row, so a sequence's
    /// numbers (and its greedy text) never depend on what else shares its batch.
    Decode,
}

/// A weight matrix in one or two forms.
struct Weight {
    quantized: QMatMul,
    dense: Option<QMatMul>,
}

impl Weight {
    fn forward(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        match (&self.dense, pass) {
            (Some(dense), Pass::Prefill) => dense.forward(x),
            _ => self.quantized.forward(x),
        }
    }
}

impl Llama {
    pub fn load(
        file: &GgufFile,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Llama, LoadError> {
        let architecture = file
            .content
            .metadata
            .get("general.architecture")
            .and_then(|value| value.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if architecture != "llama" {
            return Err(LoadError::Architecture(architecture));
        }
        let count = |key: &str| {
            file.number(&format!("llama.{key}"))
                .map(|value| value as usize)
        };
        let n_head = count("attention.head_count")?;
        let hidden = count("embedding_length")?;
        let token_embeddings = file.tensor("token_embd.weight", device)?;
        let vocab_size = token_embeddings
            .shape()
            .dims()
            .first()
            .copied()
            .unwrap_or(0);
        let config = LlamaConfig {
            n_layer: count("block_count")?,
            n_head,
            n_kv_head: count("attention.head_count_kv").unwrap_or(n_head),
            head_dim: hidden / n_head.max(1),
            hidden,
            context_length: count("context_length").unwrap_or(2048),
            vocab_size,
        };
        if config.n_head == 0
            || config.n_kv_head == 0
            || !config.n_head.is_multiple_of(config.n_kv_head)
        {
            return Err(LoadError::Format(
                "inconsistent attention head counts".into(),
            ));
        }
        let rms_eps = file
            .number("llama.attention.layer_norm_rms_epsilon")
            .unwrap_or(1e-5) as f32;
        let rope_base = file.number("llama.rope.freq_base").unwrap_or(10_000.0);
        let rope_dim = count("rope.dimension_count").unwrap_or(config.head_dim);
        let (cos, sin) = rope_tables(rope_dim, rope_base, config.context_length, device)
            .map_err(format_error)?;
        let dense = |name: &str| -> Result<Tensor, LoadError> {
            file.tensor(name, device)?
                .dequantize(device)
                .map_err(format_error)
        };
        let matmul = |name: &str| -> Result<Weight, LoadError> {
            to_matmul(file.tensor(name, device)?, device, format)
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for index in 0..config.n_layer {
            let name = |part: &str| format!("blk.{index}.{part}.weight");
            layers.push(Layer {
                wq: matmul(&name("attn_q"))?,
                wk: matmul(&name("attn_k"))?,
                wv: matmul(&name("attn_v"))?,
                wo: matmul(&name("attn_output"))?,
                gate: matmul(&name("ffn_gate"))?,
                down: matmul(&name("ffn_down"))?,
                up: matmul(&name("ffn_up"))?,
                attn_norm: dense(&name("attn_norm"))?,
                ffn_norm: dense(&name("ffn_norm"))?,
            });
        }
        // Models with tied embeddings reuse the embedding matrix as the output projection.
        let output = match file.tensor("output.weight", device) {
            Ok(output) => output,
            Err(LoadError::Missing(_)) => file.tensor("token_embd.weight", device)?,
            Err(error) => return Err(error),
        };
        Ok(Llama {
            embeddings: token_embeddings.dequantize(device).map_err(format_error)?,
            layers,
            norm: dense("output_norm.weight")?,
            output: to_matmul(output, device, format)?,
            cos,
            sin,
            rms_eps,
            device: device.clone(),
            config,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.config.n_layer).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Feeds a prompt (or its continuation) to one sequence; returns the next-token logits.
    /// Long prompts go through in chunks, so attention scores never exceed
    /// `PREFILL_CHUNK × context` per head.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Vec<f32>> {
        let mut logits = Vec::new();
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            logits = self.prefill_chunk(chunk, cache)?;
        }
        Ok(logits)
    }

    fn prefill_chunk(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Vec<f32>> {
        let length = tokens.len();
        let start = cache.len;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x =
            self.embeddings
                .index_select(&ids, 0)?
                .reshape((1, length, self.config.hidden))?;
        let cos = self.cos.narrow(0, start, length)?;
        let sin = self.sin.narrow(0, start, length)?;
        let mask = if length > 1 {
            Some(causal_mask(length, start, &self.device)?)
        } else {
            None
        };
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.rms_eps)?;
            let (q, k, v) = self.project_qkv(layer, &h, 1, length, Pass::Prefill)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = append(slot, k, v)?;
            let y = self.attend(&q, &k, &v, mask.as_ref())?;
            let y = y
                .transpose(1, 2)?
                .reshape((1, length, self.config.hidden))?;
            x = (layer.wo.forward(&y, Pass::Prefill)? + x)?;
            x = self.feed_forward(layer, x, Pass::Prefill)?;
        }
        cache.len += length;
        let last = x.narrow(1, length - 1, 1)?;
        let logits = self.output.forward(
            &candle_nn::ops::rms_norm(&last, &self.norm, self.rms_eps)?,
            Pass::Decode,
        )?;
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }

    /// One decoding step for a batch: sequence `i` takes `tokens[i]` at its own position.
    /// Returns each sequence's next-token logits.
    pub fn decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let batch = tokens.len();
        let positions: Vec<u32> = caches.iter().map(|cache| cache.len as u32).collect();
        let position_ids = Tensor::new(positions.as_slice(), &self.device)?;
        let half = self.cos.dim(1)?;
        let cos = self
            .cos
            .index_select(&position_ids, 0)?
            .reshape((batch, 1, half))?;
        let sin = self
            .sin
            .index_select(&position_ids, 0)?
            .reshape((batch, 1, half))?;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x =
            self.embeddings
                .index_select(&ids, 0)?
                .reshape((batch, 1, self.config.hidden))?;
        for (layer_index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.rms_eps)?;
            let (q, k, v) = self.project_qkv(layer, &h, batch, 1, Pass::Decode)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            // Attention is per sequence: each has its own history length.
            let mut outputs = Vec::with_capacity(batch);
            for (index, cache) in caches.iter_mut().enumerate() {
                let slot = &mut cache.layers[layer_index];
                let (k_all, v_all) = append(slot, k.narrow(0, index, 1)?, v.narrow(0, index, 1)?)?;
                outputs.push(self.attend(&q.narrow(0, index, 1)?, &k_all, &v_all, None)?);
            }
            let y = Tensor::cat(&outputs, 0)?.transpose(1, 2)?.reshape((
                batch,
                1,
                self.config.hidden,
            ))?;
            x = (layer.wo.forward(&y, Pass::Decode)? + x)?;
            x = self.feed_forward(layer, x, Pass::Decode)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        let logits = self.output.forward(
            &candle_nn::ops::rms_norm(&x, &self.norm, self.rms_eps)?,
            Pass::Decode,
        )?;
        logits
            .reshape((batch, self.config.vocab_size))?
            .to_dtype(DType::F32)?
            .to_vec2()
    }

    fn project_qkv(
        &self,
        layer: &Layer,
        h: &Tensor,
        batch: usize,
        length: usize,
        pass: Pass,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let config = &self.config;
        let shape = |tensor: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            tensor
                .reshape((batch, length, heads, config.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        Ok((
            shape(layer.wq.forward(h, pass)?, config.n_head)?,
            shape(layer.wk.forward(h, pass)?, config.n_kv_head)?,
            shape(layer.wv.forward(h, pass)?, config.n_kv_head)?,
        ))
    }

    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let groups = self.config.n_head / self.config.n_kv_head;
        let k = repeat_kv(k, groups)?;
        let v = repeat_kv(v, groups)?;
        let scale = 1.0 / (self.config.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
    }

    fn feed_forward(&self, layer: &Layer, x: Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.rms_eps)?;
        let gated = (candle_nn::ops::silu(&layer.gate.forward(&h, pass)?)?
            * layer.up.forward(&h, pass)?)?;
        layer.down.forward(&gated, pass)? + x
    }
}

fn to_matmul(tensor: QTensor, device: &Device, format: WeightFormat) -> Result<Weight, LoadError> {
    use candle_core::quantized::GgmlDType;
    if format == WeightFormat::F32 {
        let dense = tensor.dequantize(device).map_err(format_error)?;
        return Ok(Weight {
            quantized: QMatMul::Tensor(dense),
            dense: None,
        });
    }
    let dense = match format {
        WeightFormat::Hybrid => Some(QMatMul::Tensor(
            tensor.dequantize(device).map_err(format_error)?,
        )),
        _ => None,
    };
    let slow = matches!(
        tensor.dtype(),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    );
    let quantized = if slow && format != WeightFormat::Native {
        let values = tensor.dequantize(device).map_err(format_error)?;
        QMatMul::from_qtensor(QTensor::quantize(&values, GgmlDType::Q8_0).map_err(format_error)?)
            .map_err(format_error)?
    } else {
        QMatMul::from_qtensor(tensor).map_err(format_error)?
    };
    Ok(Weight { quantized, dense })
}

fn append(
    slot: &mut Option<(Tensor, Tensor)>,
    k: Tensor,
    v: Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (k, v) = match slot.take() {
        None => (k, v),
        Some((k_cache, v_cache)) => (
            Tensor::cat(&[&k_cache, &k], 2)?,
            Tensor::cat(&[&v_cache, &v], 2)?,
        ),
    };
    *slot = Some((k.clone(), v.clone()));
    Ok((k, v))
}

fn repeat_kv(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (batch, heads, length, head_dim) = x.dims4()?;
    Tensor::cat(&vec![x; groups], 2)?.reshape((batch, heads * groups, length, head_dim))
}

/// Additive causal mask for `length` new positions after `start` cached ones: 0 where a
/// query may look, -inf where it may not.
fn causal_mask(length: usize, start: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = start + length;
    let values: Vec<f32> = (0..length)
        .flat_map(|row| {
            (0..total).map(move |column| {
                if column > start + row {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (length, total), device)
}

fn rope_tables(
    dimension: usize,
    base: f64,
    positions: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inverse: Vec<f32> = (0..dimension)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f64 / dimension as f64) as f32)
        .collect();
    let inverse = Tensor::new(inverse.as_slice(), device)?;
    let steps = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let angles = steps.matmul(&inverse.reshape((1, ()))?)?;
    Ok((angles.cos()?.contiguous()?, angles.sin()?.contiguous()?))
}

impl KvCache {
    /// A second cache with the same history; tensors are shared, not copied.
    pub fn clone_of(cache: &KvCache) -> KvCache {
        KvCache {
            layers: cache.layers.clone(),
            len: cache.len,
        }
    }
}
