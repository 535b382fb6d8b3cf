//! Device inventory and placement: which GPUs (through the CUDA driver, loaded dynamically) or
//! CPU memory a model can live on, and refusing a model that does not fit.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "ordinal", rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the model needs {need} of memory but the largest free device ({device}) has {free}", need = gib(*need), free = gib(*free))]
    TooLarge {
        need: u64,
        device: String,
        free: u64,
    },
    #[error("no device to place the model on")]
    NoDevice,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Every device this process could use: GPUs where a CUDA driver is present, then the CPU.
pub fn inventory() -> Vec<DeviceInfo> {
    let mut devices = match cuda_devices() {
        Ok(gpus) => gpus,
        Err(reason) => {
            tracing::info!(%reason, "no CUDA GPU found; running on the CPU");
            Vec::new()
        }
    };
    devices.push(cpu());
    devices
}

fn cuda_devices() -> Result<Vec<DeviceInfo>, String> {
    // Without a driver, cudarc's loader would panic on first use: ask first. A `cuda` build
    // links the driver instead, so it would not have started without one.
    #[cfg(not(feature = "cuda"))]
    {
        #[expect(
            unsafe_code,
            reason = "cudarc's presence check is an FFI probe of the dynamic loader"
        )]
        // SAFETY: only tries to open the driver library; nothing is called through it yet.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            return Err("the CUDA driver library is not installed".into());
        }
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|error| error.to_string())?;
    (0..usize::try_from(count).unwrap_or(0))
        .map(|ordinal| {
            let context =
                cudarc::driver::CudaContext::new(ordinal).map_err(|error| error.to_string())?;
            let (free, total) = context.mem_get_info().map_err(|error| error.to_string())?;
            Ok(DeviceInfo {
                kind: DeviceKind::Cuda(ordinal),
                name: context.name().unwrap_or_else(|_| format!("cuda:{ordinal}")),
                total_bytes: total as u64,
                free_bytes: free as u64,
            })
        })
        .collect()
}

fn cpu() -> DeviceInfo {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    DeviceInfo {
        kind: DeviceKind::Cpu,
        name: "cpu".into(),
        total_bytes: field("MemTotal:"),
        free_bytes: field("MemAvailable:"),
    }
}

/// The first usable device with room for `need` bytes. GPUs come first; this build uses a
/// GPU only when compiled with the `cuda` feature.
pub fn place(
    need: u64,
    devices: &[DeviceInfo],
    gpus_usable: bool,
) -> Result<DeviceInfo, PlacementError> {
    let usable: Vec<&DeviceInfo> = devices
        .iter()
        .filter(|device| gpus_usable || device.kind == DeviceKind::Cpu)
        .collect();
    if let Some(device) = usable.iter().find(|device| device.free_bytes >= need) {
        return Ok((*device).clone());
    }
    let largest = usable
        .iter()
        .max_by_key(|device| device.free_bytes)
        .ok_or(PlacementError::NoDevice)?;
    Err(PlacementError::TooLarge {
        need,
        device: largest.name.clone(),
        free: largest.free_bytes,
    })
}

/// The candle device for a placement.
pub fn candle_device(kind: DeviceKind) -> candle_core::Result<candle_core::Device> {
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        DeviceKind::Cuda(ordinal) => candle_core::Device::new_cuda(ordinal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(kind: DeviceKind, free: u64) -> DeviceInfo {
        DeviceInfo {
            kind,
            name: format!("{kind:?}"),
            total_bytes: free,
            free_bytes: free,
        }
    }

    #[test]
    fn places_on_the_first_device_with_room() {
        let devices = [
            device(DeviceKind::Cuda(0), 10),
            device(DeviceKind::Cuda(1), 100),
            device(DeviceKind::Cpu, 1000),
        ];
        assert_eq!(place(50, &devices, true).unwrap().kind, DeviceKind::Cuda(1));
        assert_eq!(place(50, &devices, false).unwrap().kind, DeviceKind::Cpu);
        assert_eq!(place(500, &devices, true).unwrap().kind, DeviceKind::Cpu);
    }

    #[test]
    fn refuses_a_model_that_fits_nowhere() {
        let devices = [device(DeviceKind::Cpu, 1 << 30)];
        let error = place(3 << 30, &devices, true).unwrap_err();
        assert!(matches!(error, PlacementError::TooLarge { .. }));
        assert!(error.to_string().contains("3.00 GiB"), "{error}");
        assert_eq!(place(1, &[], true), Err(PlacementError::NoDevice));
    }

    #[test]
    fn the_cpu_is_always_listed() {
        let devices = inventory();
        assert_eq!(
            devices.last().map(|device| device.kind),
            Some(DeviceKind::Cpu)
        );
    }
}
