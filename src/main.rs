//! `ferry`: the command line and composition root. Parses arguments and hands over.

mod config;
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
    /// Print the OpenAPI document of the HTTP surface.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
        Command::Openapi => {
            println!("{}", ferry_functions::openapi_json()?);
            Ok(())
        }
    }
}
