//! `ferry`: the command line and composition root. Parses arguments and hands over.

mod config;
mod models;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: pay-per-call LLM serving, OpenAI-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: gateway, admin API and embedded store.
    Serve(serve::ServeArgs),
    /// Run one GPU-pool replica: the native engines behind an OpenAI-compatible API.
    Worker(models::WorkerArgs),
    /// Pull and list the pinned models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Print the OpenAPI document of the HTTP surface.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
        Command::Worker(args) => models::worker(args).await,
        Command::Models(command) => models::run(command),
        Command::Openapi => {
            println!("{}", ferry_functions::openapi_json()?);
            Ok(())
        }
    }
}
