//! `hds`: the composition root. `hds up` assembles the services from the library crates and
//! serves them; the other subcommands are clients. No business logic lives here.

mod cli;
mod logging;
mod up;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let arguments = cli::Cli::parse();
    match arguments.command {
        cli::Command::Up(options) => {
            logging::init();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(up::run(options))
        }
    }
}
