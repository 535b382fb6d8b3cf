//! The console's build (`console/dist`) is embedded by `include_dir!`, which cannot tell cargo
//! what it read on stable Rust: a changed build must still rebuild this crate.
fn main() {
    println!("cargo::rerun-if-changed=../console/dist");
}
