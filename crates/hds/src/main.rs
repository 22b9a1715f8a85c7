//! `hds`: the composition root. `hds up` assembles the services from the library crates and
//! serves them; the other subcommands are clients. No business logic lives here.

mod access;
mod adapters;
mod audit;
mod az_metadata;
mod blob_store;
mod cli;
mod client;
mod events;
mod listener_limits;
mod logging;
mod metrics;
mod recovery;
mod root_key;
mod seed_flow;
mod tls;
mod up;
mod vault_access;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a QIDO page or a STOW group allocates and frees many
/// small values (JSON maps, rows, strings) across tokio's worker threads, where glibc's arenas
/// spent about a quarter of a search's CPU time (docs/benchmarks.md, "QIDO cost and archive
/// size").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let arguments = cli::Cli::parse();
    match arguments.command {
        cli::Command::Up(options) => {
            logging::init()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(up::run(*options))
        }
        cli::Command::Login(options) => client_runtime()?.block_on(client::account::login(options)),
        cli::Command::Account(client::account::AccountCommand::GetAccessToken(options)) => {
            client_runtime()?.block_on(client::account::get_access_token(options))
        }
        cli::Command::Dicom(command) => client_runtime()?.block_on(client::dicom::run(command)),
        cli::Command::DicomService(client::control::DicomServiceCommand::Update(options)) => {
            client_runtime()?.block_on(client::control::dicom_service_update(options))
        }
        cli::Command::Keyvault(client::control::KeyVaultCommand::Key(command)) => client_runtime()?
            .block_on(async move {
                match command {
                    client::control::KeyCommand::Create(options) => {
                        client::control::key_create(options).await
                    }
                    client::control::KeyCommand::Rotate(options) => {
                        client::control::key_rotate(options).await
                    }
                }
            }),
        cli::Command::Role(client::control::RoleCommand::Assignment(
            client::control::AssignmentCommand::Create(options),
        )) => client_runtime()?.block_on(client::control::assignment_create(options)),
        cli::Command::Rest(options) => client_runtime()?.block_on(client::arm::rest(options)),
        cli::Command::Deployment(client::arm::DeploymentCommand::Group(
            client::arm::GroupDeploymentCommand::Create(options),
        )) => client_runtime()?.block_on(client::arm::deployment_group_create(options)),
        cli::Command::Backup(options) => {
            logging::init()?;
            client_runtime()?.block_on(recovery::backup(options))
        }
        cli::Command::Restore(options) => {
            logging::init()?;
            client_runtime()?.block_on(recovery::restore(options))
        }
        cli::Command::Audit(audit::AuditCommand::List(options)) => {
            client_runtime()?.block_on(audit::list(options))
        }
        cli::Command::Audit(audit::AuditCommand::Verify(options)) => {
            client_runtime()?.block_on(audit::verify(options))
        }
        cli::Command::RootKey(root_key::RootKeyCommand::Protect(options)) => {
            logging::init()?;
            root_key::protect(options)
        }
    }
}

/// Client commands do little concurrent work: one thread is enough.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
