//! `corral new`: create a guest project (Rust, wasm32-wasip2).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// Project (and component) name: a-z, 0-9, '-' and '_'.
    pub name: String,
    /// Where to create it [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The corral-guest crate [default: CORRAL_GUEST_SDK, else guest-sdk/ of this checkout].
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// `corral new`: a guest project to start from.
pub(super) fn new(args: NewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let sdk = match args.sdk {
        Some(sdk) => sdk,
        None => crate::scaffold::find_sdk()?,
    };
    crate::scaffold::create(&args.name, &dir, &sdk)?;
    println!("created {} in {}", args.name, dir.display());
    println!("  build:  cd {} && cargo build --release", dir.display());
    println!(
        "  try it: corral run target/wasm32-wasip2/release/{}.wasm --model model=MODEL.onnx",
        args.name
    );
    Ok(())
}
