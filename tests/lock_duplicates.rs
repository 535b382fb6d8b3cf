//! Cargo.lock has at most the duplicates that deny.toml's `[bans] skip` list explains, and that
//! list has no entry that Cargo.lock no longer needs. (cargo-deny checks the built graph; this
//! checks the lock file itself, which also holds what Cargo locks but never builds.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(name: &str) -> toml::Table {
    let text = std::fs::read_to_string(Path::new(ROOT).join(name)).expect(name);
    text.parse::<toml::Table>().expect(name)
}

/// `name@1.2` in cargo-deny means `=1.2`: every version whose leading components are those.
fn matches(spec_version: &str, version: &str) -> bool {
    let version = version.split('+').next().unwrap_or(version);
    let wanted: Vec<&str> = spec_version.split('.').collect();
    let have: Vec<&str> = version.split('.').collect();
    wanted.len() <= have.len() && wanted.iter().zip(&have).all(|(a, b)| a == b)
}

#[test]
fn cargo_lock_has_only_the_duplicates_deny_toml_explains() {
    let lock = read("Cargo.lock");
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in lock["package"].as_array().unwrap() {
        versions
            .entry(package["name"].as_str().unwrap().to_owned())
            .or_default()
            .insert(package["version"].as_str().unwrap().to_owned());
    }
    let deny = read("deny.toml");
    let skips: Vec<(String, String, String)> = deny["bans"]["skip"]
        .as_array()
        .unwrap()
        .iter()
        .map(|skip| {
            let spec = skip["crate"]
                .as_str()
                .expect("skip entries are `crate = \"name@version\"`");
            let reason = skip.get("reason").and_then(|r| r.as_str()).unwrap_or("");
            assert!(
                !reason.trim().is_empty(),
                "{spec}: every skip needs a reason"
            );
            let (name, version) = spec.split_once('@').expect("skip entries name a version");
            (name.to_owned(), version.to_owned(), spec.to_owned())
        })
        .collect();
    let mut problems = Vec::new();
    for (name, found) in versions.iter().filter(|(_, found)| found.len() > 1) {
        let unexplained: Vec<&String> = found
            .iter()
            .filter(|version| {
                !skips
                    .iter()
                    .any(|(n, v, _)| n == name && matches(v, version))
            })
            .collect();
        if unexplained.len() > 1 {
            problems.push(format!(
                "{name}: {unexplained:?} are duplicates no skip explains"
            ));
        }
    }
    for (name, version, spec) in &skips {
        let found = versions.get(name);
        let used =
            found.is_some_and(|found| found.len() > 1 && found.iter().any(|v| matches(version, v)));
        if !used {
            problems.push(format!(
                "{spec}: skip no longer needed (Cargo.lock has {found:?})"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
