//! `ferry`: the command line and composition root. Parses arguments and hands over.

mod billing;
mod config;
mod function;
mod models;
mod pool;
mod scaler;
mod serve;
mod telemetry;

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
    /// Run one stateless function (gateway, admin or billing): on Lambda when its runtime API
    /// is there, otherwise on $PORT (Knative). Configured by the environment: see README.
    Function(function::FunctionArgs),
    /// Run one GPU-pool replica: the native engines behind an OpenAI-compatible API.
    Worker(models::WorkerArgs),
    /// Run the GPU pool's activator and autoscaler as a service, in front of replicas made by
    /// a provider (local worker processes, or ECS tasks in an `aws` build).
    Scaler(scaler::ScalerArgs),
    /// Pull and list the pinned models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Close billing periods into invoices, and reconcile the books.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// The GPU pool: replay a trace through the autoscaling policies; Knative manifests.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Print the OpenAPI document of the HTTP surface.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // On Lambda the bootstrap runs with no arguments; the function's handler setting names
    // which function this is.
    let cli = match function::lambda_handler() {
        Some(handler) if std::env::args_os().len() == 1 => {
            Cli::parse_from(["ferry", "function", handler.as_str()])
        }
        _ => Cli::parse(),
    };
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Function(args) => function::run(args).await,
        Command::Worker(args) => models::worker(args).await,
        Command::Scaler(args) => scaler::run(args).await,
        Command::Models(command) => models::run(command),
        Command::Billing(command) => {
            let _telemetry = telemetry::init(false, "ferry");
            let code = billing::run(command).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Pool(command) => pool::run(command),
        Command::Openapi => {
            println!("{}", ferry_functions::openapi_json()?);
            Ok(())
        }
    }
}
