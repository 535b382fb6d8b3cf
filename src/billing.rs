//! `ferry billing`: close a month into invoices (and export its usage events), and reconcile
//! the books. Both work on the same store `ferry serve` writes, while it runs or after.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use ferry_core::Money;
use ferry_core::billing::{self, Invoice};
use ferry_core::calendar::Month;
use ferry_core::ports::{Accounts, Store};
use ferry_functions::billing::{Books, Outcome};
use ferry_functions::clock;
use ferry_store_sqlite::{LocalObjectStore, SqliteStore};

#[derive(clap::Subcommand)]
pub enum BillingCommand {
    /// Make each tenant's invoice for a month (a line per model) from its usage events, and
    /// export the month's usage events (JSONL CloudEvents) and invoices to the object store.
    Close {
        /// The month, as YYYY-MM (UTC).
        #[arg(long)]
        period: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Where exports go (default: objects/ in the data directory).
        #[arg(long, env = "FERRY_EXPORT_DIR")]
        export_dir: Option<PathBuf>,
    },
    /// Check that usage events, settled ledger debits and invoice lines agree to the
    /// nanodollar, and that the ledger balances; exits 1 and prints every difference if not.
    Reconcile {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The data directory of the `ferry serve` whose books these are.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<SqliteStore> {
        let path = self.data_dir.join("ferry.db");
        anyhow::ensure!(path.exists(), "no store at {}", path.display());
        SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))
    }
}

/// Runs a billing command; the exit code is 1 when reconciliation finds differences.
pub async fn run(command: BillingCommand) -> anyhow::Result<i32> {
    match command {
        BillingCommand::Close {
            period,
            store,
            export_dir,
        } => {
            let month: Month = period.parse().map_err(|_| {
                anyhow::anyhow!("--period must be a month as YYYY-MM, not {period:?}")
            })?;
            let objects =
                LocalObjectStore::new(export_dir.unwrap_or_else(|| store.data_dir.join("objects")));
            close(store.open()?, objects, month).await?;
            Ok(0)
        }
        BillingCommand::Reconcile { store } => reconcile(&store.open()?).await,
    }
}

async fn close(store: SqliteStore, objects: LocalObjectStore, month: Month) -> anyhow::Result<()> {
    let now = clock::unix_seconds();
    if month.bounds_unix().1 > now {
        println!(
            "note: {month} has not ended; calls made after now will need the period closed again"
        );
    }
    let store = Arc::new(store);
    let books = Books {
        store: store.clone(),
        accounts: store,
        objects: Arc::new(objects),
    };
    let Outcome::Closed { invoices, .. } = books.close(month, now).await? else {
        anyhow::bail!("closing {month} did not close it");
    };
    if invoices.is_empty() {
        println!("{month}: no billable usage");
    }
    for closed in &invoices {
        print_invoice(&closed.invoice, closed.created);
        println!(
            "  {} usage events → {}",
            closed.usage_events, closed.usage_export
        );
    }
    Ok(())
}

fn print_invoice(invoice: &Invoice, created: bool) {
    let state = if created { "closed" } else { "unchanged" };
    println!(
        "{} {} ({state}): {} USD",
        invoice.id, invoice.period, invoice.total_usd
    );
    for line in &invoice.lines {
        let totals = &line.totals;
        println!(
            "  {:<32} {:>8} calls {:>10} in {:>10} cached {:>10} out {:>16} USD",
            line.model,
            totals.requests,
            totals.prompt_tokens,
            totals.cached_tokens,
            totals.completion_tokens,
            totals.cost_usd
        );
    }
}

async fn reconcile(store: &SqliteStore) -> anyhow::Result<i32> {
    let (ledger, tenants) = store.figures().await?;
    for tenant in &tenants {
        let name = store
            .get_tenant(&tenant.tenant_id)
            .await?
            .map(|tenant| tenant.name)
            .unwrap_or_default();
        let written_off = if tenant.written_off == Money::ZERO {
            String::new()
        } else {
            format!(", written off {} USD", tenant.written_off)
        };
        println!(
            "{} ({name}): usage {} USD, settled {} USD{written_off}, {} invoices",
            tenant.tenant_id,
            tenant.usage,
            tenant.settled,
            tenant.invoiced.len()
        );
    }
    let found = billing::discrepancies(&ledger, &tenants);
    if found.is_empty() {
        println!(
            "reconciled: usage = settled debits = invoice lines for {} tenants; the ledger balances",
            tenants.len()
        );
        Ok(0)
    } else {
        for difference in &found {
            println!("MISMATCH {difference}");
        }
        Ok(1)
    }
}
