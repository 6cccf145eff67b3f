//! Which NVIDIA GPUs a job may use. A GPU is named by its device minor number (`/dev/nvidiaN`). A job
//! limited to some GPUs gets only their device nodes (plus the driver's shared control nodes) in the
//! local sandbox, only them as docker `device_ids`, and a `CUDA_VISIBLE_DEVICES` naming them by UUID,
//! so two runs on one machine cannot open, measure or disturb each other's device. Phases that need no
//! GPU (the build, data preparation) get none.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The GPUs a job may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gpus {
    /// Every GPU of the host (one run at a time).
    #[default]
    All,
    /// Only these device minors; empty: no GPU at all.
    Only(Vec<u32>),
}

impl Gpus {
    pub fn none() -> Self {
        Gpus::Only(vec![])
    }

    fn allows(&self, minor: u32) -> bool {
        match self {
            Gpus::All => true,
            Gpus::Only(list) => list.contains(&minor),
        }
    }

    fn any(&self) -> bool {
        !matches!(self, Gpus::Only(list) if list.is_empty())
    }
}

/// The minor number of a per-GPU node name (`nvidia3` → 3); `None` for the control nodes
/// (`nvidiactl`, `nvidia-uvm`, `nvidia-modeset`, `nvidia-caps`, …).
fn gpu_minor(name: &str) -> Option<u32> {
    name.strip_prefix("nvidia").filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// The NVIDIA device nodes under `dev` (the host's `/dev`) that a job with `gpus` gets: its GPUs'
/// own nodes, and the control nodes when it has any GPU.
pub fn device_nodes(dev: &Path, gpus: &Gpus) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dev) else { return vec![] };
    let mut nodes: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nvidia") {
                return None;
            }
            let keep = match gpu_minor(&name) {
                Some(minor) => gpus.allows(minor),
                None => gpus.any(),
            };
            keep.then(|| e.path())
        })
        .collect();
    nodes.sort();
    nodes
}

/// The GPUs (device minors) of this host, from the `/dev/nvidiaN` nodes under `dev`, ascending.
pub fn host_gpus(dev: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dev) else { return vec![] };
    let mut minors: Vec<u32> = entries.flatten().filter_map(|e| gpu_minor(&e.file_name().to_string_lossy())).collect();
    minors.sort_unstable();
    minors
}

/// The environment that tells CUDA which of the host's GPUs a job has: nothing for [`Gpus::All`]
/// (the server's own `CUDA_VISIBLE_DEVICES`, if any, passes through); otherwise their UUIDs, read from
/// the driver's `information` files under `proc_gpus` (`/proc/driver/nvidia/gpus`), which do not
/// depend on CUDA's device ordering. Without them, the minors in PCI bus order (the driver numbers
/// devices that way); no GPU at all is an empty list, which CUDA reads as "no device".
pub fn cuda_env(proc_gpus: &Path, gpus: &Gpus) -> Vec<(String, String)> {
    let Gpus::Only(list) = gpus else { return vec![] };
    let uuids = uuids_by_minor(proc_gpus);
    let named: Option<Vec<String>> =
        list.iter().map(|m| uuids.iter().find(|(k, _)| k == m).map(|(_, u)| u.clone())).collect();
    let mut env = vec![];
    let visible = match named {
        Some(uuids) => uuids.join(","),
        None => {
            env.push(("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()));
            list.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    env.push(("CUDA_VISIBLE_DEVICES".to_string(), visible));
    env
}

/// (device minor, GPU UUID) of every GPU the driver lists under `proc_gpus`.
fn uuids_by_minor(proc_gpus: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(proc_gpus) else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path().join("information")).ok()?;
            let field = |key: &str| {
                info.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches(':').trim().to_string()))
            };
            Some((field("Device Minor")?.parse().ok()?, field("GPU UUID")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_dev(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        d
    }

    fn names(nodes: &[PathBuf]) -> Vec<String> {
        nodes.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_job_gets_its_own_gpus_nodes_and_the_control_nodes_only() {
        let dev = fake_dev(&["nvidia0", "nvidia1", "nvidia12", "nvidiactl", "nvidia-uvm", "null", "nvme0"]);
        assert_eq!(host_gpus(dev.path()), [0, 1, 12]);
        assert_eq!(
            names(&device_nodes(dev.path(), &Gpus::All)),
            ["nvidia-uvm", "nvidia0", "nvidia1", "nvidia12", "nvidiactl"]
        );
        assert_eq!(names(&device_nodes(dev.path(), &Gpus::Only(vec![1]))), ["nvidia-uvm", "nvidia1", "nvidiactl"]);
        assert!(device_nodes(dev.path(), &Gpus::none()).is_empty(), "no GPU, no control node");
        assert!(device_nodes(Path::new("/nonexistent"), &Gpus::All).is_empty());
    }

    #[test]
    fn cuda_is_told_the_gpus_by_uuid_when_the_driver_lists_them() {
        let proc_gpus = tempfile::tempdir().unwrap();
        for (bus, minor, uuid) in [("0000:17:00.0", 0, "GPU-aaaa"), ("0000:65:00.0", 1, "GPU-bbbb")] {
            let d = proc_gpus.path().join(bus);
            std::fs::create_dir_all(&d).unwrap();
            let info = format!("Model: \t\t NVIDIA H100\nGPU UUID: \t {uuid}\nDevice Minor: \t {minor}\n");
            std::fs::write(d.join("information"), info).unwrap();
        }
        assert!(cuda_env(proc_gpus.path(), &Gpus::All).is_empty(), "all GPUs: the server's setting passes through");
        let env = cuda_env(proc_gpus.path(), &Gpus::Only(vec![1]));
        assert_eq!(env, [("CUDA_VISIBLE_DEVICES".to_string(), "GPU-bbbb".to_string())]);
        // A minor the driver does not list: by PCI order, said explicitly.
        let env = cuda_env(proc_gpus.path(), &Gpus::Only(vec![3]));
        assert!(env.contains(&("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into())), "{env:?}");
        assert!(env.contains(&("CUDA_VISIBLE_DEVICES".into(), "3".into())), "{env:?}");
        assert_eq!(cuda_env(proc_gpus.path(), &Gpus::none()), [("CUDA_VISIBLE_DEVICES".to_string(), String::new())]);
    }
}
