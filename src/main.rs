use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// zhisuan (智算): GPU/NPU cluster scheduler — packing, green-power-aware regions,
/// per-tenant token and compute-voucher accounting.
#[derive(Parser)]
#[command(name = "zhisuan", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay a GPU trace (openb) through a placement policy, per the FGD paper's protocol (docs/benchmarks.md).
    Replay(zhisuan::sim::replay::ReplayArgs),
    /// Time-stepped multi-region simulation (East Data, West Computing).
    Sim(zhisuan::sim::regions::SimArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd(zhisuan::operator::cli::CrdArgs),
    /// Run the Kubernetes operator (reconcilers, scheduling loop, leader election).
    Controller(zhisuan::operator::cli::ControllerArgs),
    /// Run the node agent (GPU/NPU telemetry, per-pod energy, health).
    Agent(Box<zhisuan::telemetry::cli::AgentArgs>),
    /// Print a tenant's monthly statement from the ledger.
    Statement(zhisuan::ledger::cli::StatementArgs),
    /// Ledger administration: init, tenants, vouchers, rate cards, ingest.
    Ledger(zhisuan::ledger::cli::LedgerArgs),
    /// Serve the quota API for tenants and admins.
    Api(zhisuan::cmd::api::ApiArgs),
    /// The whole system in one process on an embedded default (no cluster needed).
    Demo(zhisuan::demo::DemoArgs),
    /// Make the quota API's admin-key Secret once (the chart's install hook).
    AdminKey(zhisuan::cmd::admin_key::AdminKeyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Replay(a) => zhisuan::sim::replay::run(a),
        Cmd::Sim(a) => zhisuan::sim::regions::run(a),
        Cmd::Crd(a) => zhisuan::operator::cli::run_crd(a),
        Cmd::Controller(a) => zhisuan::operator::cli::run_controller(a),
        Cmd::Agent(a) => zhisuan::telemetry::cli::run(*a),
        Cmd::Statement(a) => zhisuan::ledger::cli::run(a),
        Cmd::Ledger(a) => zhisuan::ledger::cli::run_ledger(a),
        Cmd::Api(a) => zhisuan::cmd::api::run(a),
        Cmd::AdminKey(a) => zhisuan::cmd::admin_key::run(a),
        Cmd::Demo(a) => zhisuan::demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(zhisuan::error::exit_code(&e))
        }
    }
}
