//! `corral config check`: validate a configuration file without starting.

use std::path::PathBuf;

use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file (with CORRAL_* overrides) without starting; prints the
    /// effective configuration.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// `corral config ...`.
pub(super) fn config(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = Config::load(Some(&file))?;
            println!("# {}: valid; the effective configuration:", file.display());
            print!("{}", config.to_toml());
            Ok(())
        }
    }
}
