//! `drover`: the command-line tool. It speaks the master's REST API through
//! `drover_api::client`, prints tables for people and JSON for scripts, and
//! runs a whole local cluster with `drover dev`.
//!
//! Exit status: 0 success, 1 the command (or the awaited job) failed, 2
//! usage, 3 the master could not be reached (see `error.rs`).

mod args;
mod cluster;
mod dev;
mod error;
mod job;
mod node;
mod output;
mod simulate;
mod task;
mod wait;

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use drover_api::client::Client;

use args::{ApiCommand, Cli, Command, Output};

// `drover dev` and `drover simulate` run the master in this process: the
// same allocator as drover-master (see its main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What every command needs: the client and how to print.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    pub output: Output,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

fn main() -> ExitCode {
    // `drover dev` runs agents in this process, and their tasks are
    // supervised by this very binary started as `drover __shim <dir>`. That
    // must be decided before anything else happens (no threads, no logging).
    let argv: Vec<OsString> = std::env::args_os().collect();
    if drover_agent::shim::is_shim_invocation(&argv) {
        std::process::exit(drover_agent::shim::main(argv));
    }
    // Usage errors exit with 2 here; --help and --version with 0.
    let cli = Cli::parse_from(argv);
    ExitCode::from(run(cli))
}

fn run(cli: Cli) -> u8 {
    let addrs: Vec<String> = cli
        .global
        .addr
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let token = match token(cli.global.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail(&e, &addrs, false),
    };
    let had_token = token.is_some();
    let mut client = Client::new(addrs.clone(), token);
    if let Some(ca) = &cli.global.cacert {
        let identity = cli
            .global
            .client_cert
            .clone()
            .zip(cli.global.client_key.clone());
        let files = drover_tls::ClientFiles {
            ca_file: Some(ca.clone()),
            identity,
        };
        match drover_tls::connector(&files) {
            Ok(c) => client = client.with_tls(c),
            Err(e) => return fail(&anyhow::Error::new(e), &addrs, had_token),
        }
    }
    let ctx = Ctx {
        client,
        output: cli.global.output,
    };
    let outcome = match cli.command {
        // `dev` builds its own runtime and runs until Ctrl-C.
        Command::Dev(args) => dev::run(args).map(|()| error::OK),
        Command::Completions { shell } => completions(shell),
        Command::Api(ApiCommand::Openapi) => openapi(),
        Command::Job(c) => block_on(job::run(&ctx, c)),
        Command::Task(c) => block_on(task::run(&ctx, c)),
        Command::Node(c) => block_on(node::run(&ctx, c)),
        Command::Cluster(c) => block_on(cluster::run(&ctx, c)),
        Command::Simulate(args) => block_on(simulate::run(&ctx, *args)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => fail(&e, &addrs, had_token),
    }
}

/// The OpenAPI document, as the master serves it.
fn openapi() -> anyhow::Result<u8> {
    use std::io::Write;
    std::io::stdout().write_all(drover_api::openapi::document_text().as_bytes())?;
    Ok(error::OK)
}

/// Prints the error (unless stdout was merely closed early) and returns the
/// exit status.
fn fail(err: &anyhow::Error, addrs: &[String], had_token: bool) -> u8 {
    // `drover job ls | head -1`: the reader left; nothing went wrong.
    let broken_pipe = err
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
    if broken_pipe {
        return error::OK;
    }
    let (text, code) = error::report(err, addrs, had_token);
    eprintln!("{text}");
    code
}

/// Runs a command's future on a one-thread runtime: a CLI command makes a
/// few requests in a row and needs no more.
fn block_on(command: impl Future<Output = anyhow::Result<u8>>) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(command)
}

/// The bearer token: `--token-file` when given, else `DROVER_TOKEN`; blank
/// means none.
fn token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let raw = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => std::env::var("DROVER_TOKEN").unwrap_or_default(),
    };
    let token = raw.trim();
    Ok((!token.is_empty()).then(|| token.to_string()))
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "drover", &mut script);
    output::emit(&String::from_utf8_lossy(&script))?;
    Ok(error::OK)
}
