//! `baton serve` (the backend of DESIGN.md §3, crate `baton-backend`), `baton workers …` and
//! `baton attach RUNTIME/WORKER` (clients of it, `baton_client::backend`).
//!
//! `baton serve` prints only the bound `http://HOST:PORT` line on stdout (`https://HOST:PORT`
//! with `--tls-cert`/`--tls-key`); logs go to stderr. Clients find the backend with `--url` (or
//! `BATON_BACKEND_URL`, default `http://127.0.0.1:8787`), the token with `--token-file` (or
//! `BATON_BACKEND_TOKEN`) and, for an `https://` backend whose certificate is not from a public
//! CA, the CA bundle with `--ca-file` (or `BATON_BACKEND_CA`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_backend::{Backend, BackendConfig, Retention, ServeOptions};
use baton_client::backend::{
    BackendEvent, BackendHttp, BackendObserver, BackendTarget, BackendTls, ObserveOptions,
    decode_cursor,
};
use tokio::io::AsyncBufReadExt as _;

const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// Arguments of `baton serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one). Off loopback a token is required.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Directory of the durable event log (`events.sqlite3`).
    #[arg(long, value_name = "DIR", default_value = ".baton/backend")]
    pub data: PathBuf,
    /// File holding the bearer token clients must send.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Delete events older than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub retain_seconds: Option<u64>,
    /// Delete the oldest events when all payloads exceed this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub retain_bytes: Option<u64>,
    /// Working directory of workers spawned without `cwd` (default: the current directory);
    /// also the workspace of `--runtime NAME=ws://…` runtimes.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Another runtime `NAME=DESTINATION`, repeatable: `ws://HOST:PORT` (a `baton exec-server`
    /// or `codex exec-server`; workspace: `--workdir`; bearer token from `BATON_SECRET_<NAME>`
    /// if set), `ssh://[USER@]HOST[:PORT]/ABS/PATH` (`baton exec-server --listen stdio` over
    /// ssh) or `local:DIR`. Unreachable runtimes do not stop the server: they show as
    /// `unavailable` and are retried on the next spawn.
    #[arg(long = "runtime", value_name = "NAME=DESTINATION")]
    pub runtimes: Vec<String>,
    /// A runtimes file (JSON `{"runtimes": {NAME: {destination, workspace?, token_secret?,
    /// config?, timeout_seconds?, …}}}`; see README.md and `baton_backend::RuntimesFile`).
    #[arg(long = "runtimes", value_name = "FILE")]
    pub runtimes_file: Option<PathBuf>,
    /// Serve HTTPS/WSS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Where the backend is (shared by `workers` and `attach`).
#[derive(Debug, clap::Args)]
pub struct BackendAddr {
    /// Backend URL.
    #[arg(long, global = true, env = "BATON_BACKEND_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// File holding the bearer token (else `BATON_BACKEND_TOKEN`).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM bundle of extra CA certificates trusted for an https:// backend (besides the
    /// built-in public roots).
    #[arg(long, global = true, env = "BATON_BACKEND_CA", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Arguments of `baton workers`.
#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    backend: BackendAddr,
    #[command(subcommand)]
    command: WorkersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WorkersCommand {
    /// List the backend's runtimes (`RUNTIME KIND STATE`, or JSON with --json).
    Runtimes {
        /// Print the JSON array.
        #[arg(long)]
        json: bool,
    },
    /// List workers (`RUNTIME/WORKER STATE STATUS LABEL`, or JSON with --json).
    List {
        /// Print the JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Start a worker and print `RUNTIME/WORKER`.
    Spawn {
        /// Runtime id.
        #[arg(long, default_value = "local")]
        runtime: String,
        /// Label.
        #[arg(long)]
        label: Option<String>,
        /// Absolute working directory on the runtime (default: the current directory for the
        /// `local` runtime, the runtime's workspace for the others).
        #[arg(long)]
        cwd: Option<String>,
        /// Run on a pseudo-terminal.
        #[arg(long)]
        tty: bool,
        /// Extra environment variable `NAME=VALUE` (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Kill a worker's process tree.
    Stop {
        /// `RUNTIME/WORKER`.
        worker: String,
        /// Reason, recorded in the event log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Interrupt a worker (SIGINT).
    Cancel {
        /// `RUNTIME/WORKER`.
        worker: String,
        /// Reason, recorded in the event log.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Arguments of `baton attach`.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    #[command(flatten)]
    backend: BackendAddr,
    /// `RUNTIME/WORKER`.
    pub worker: String,
    /// Transcript items shown before live output.
    #[arg(long, default_value_t = 200)]
    pub history: usize,
}

fn token(addr: &BackendAddr) -> anyhow::Result<Option<String>> {
    if let Some(f) = &addr.token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read token file {}", f.display()))?;
        return Ok(Some(t.trim().to_owned()));
    }
    Ok(std::env::var("BATON_BACKEND_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

fn tls(addr: &BackendAddr) -> anyhow::Result<BackendTls> {
    Ok(match &addr.ca_file {
        Some(f) => BackendTls::from_ca_file(f)?,
        None => BackendTls::default(),
    })
}

fn split_worker(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((rt, w)) if !rt.is_empty() && !w.is_empty() => Ok((rt.to_owned(), w.to_owned())),
        _ => bail!("expected RUNTIME/WORKER, got {s:?}"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `baton serve`.
pub fn serve_main(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging(Some("warn"));
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(baton_backend::TlsConfig::from_pem_files(cert, key)?),
        _ => None,
    };
    let mut config = BackendConfig::new(&args.data);
    config.retention = Retention {
        max_age: args.retain_seconds.map(Duration::from_secs),
        max_bytes: args.retain_bytes,
    };
    if let Some(w) = args.workdir {
        config.default_cwd = w;
    }
    let mut entries: Vec<(String, baton_backend::RuntimeEntry)> = Vec::new();
    if let Some(file) = &args.runtimes_file {
        entries.extend(baton_backend::RuntimesFile::load(file)?.runtimes);
    }
    for flag in &args.runtimes {
        entries.push(baton_backend::parse_runtime_flag(flag)?);
    }
    let base_dir = std::env::current_dir().context("cannot read the current directory")?;
    let store = if config.data_dir.is_absolute() {
        config.data_dir.join("runners")
    } else {
        base_dir.join(&config.data_dir).join("runners")
    };
    let mut seen = std::collections::BTreeSet::from(["local".to_owned()]);
    let mut runners = Vec::new();
    for (id, entry) in &entries {
        if !seen.insert(id.clone()) {
            bail!("runtime {id:?} is defined twice (\"local\" is the embedded runtime)");
        }
        runners.push(std::sync::Arc::new(baton_backend::build_runtime(
            id,
            entry,
            &config.default_cwd,
            &base_dir,
            &store,
        )?));
    }
    runtime()?.block_on(async move {
        let extra: Vec<std::sync::Arc<dyn baton_backend::Runtime>> = runners
            .into_iter()
            .map(|r| r as std::sync::Arc<dyn baton_backend::Runtime>)
            .collect();
        let backend = Backend::open(config, extra).context("cannot open the backend")?;
        // Open the runtimes' sessions (resuming the previous run's) and follow again the
        // workers they kept, in the background: serving starts at once.
        tokio::spawn({
            let backend = backend.clone();
            async move { backend.recover().await }
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = ServeOptions { token, tls };
        let listener = baton_backend::bind(args.listen, &options).await?;
        let addr = listener.local_addr().context("bound address")?;
        println!("{scheme}://{addr}");
        std::io::stdout().flush().ok();
        tracing::info!(%addr, log = %backend.log_path().display(), "backend listening");
        let result = tokio::select! {
            r = baton_backend::serve(listener, backend.clone(), options) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        backend.shutdown().await;
        result.map(|()| ExitCode::SUCCESS)
    })
}

/// `baton workers …`.
pub fn workers_main(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let http =
        BackendHttp::new(&args.backend.url, token(&args.backend)?)?.with_tls(tls(&args.backend)?);
    runtime()?.block_on(async move {
        match args.command {
            WorkersCommand::Runtimes { json } => {
                let runtimes = http.list_runtimes().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&runtimes)?);
                } else {
                    for r in runtimes {
                        println!("{}\t{}\t{}", r.runtime_id, r.kind, r.state);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            WorkersCommand::List { json } => {
                let workers = http.list_workers().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&workers)?);
                } else {
                    for w in workers {
                        println!(
                            "{}/{}\t{}\t{}\t{}",
                            w["runtime_id"].as_str().unwrap_or_default(),
                            w["worker_id"].as_str().unwrap_or_default(),
                            w["state"].as_str().unwrap_or_default(),
                            w["status"].as_str().unwrap_or_default(),
                            w["label"].as_str().unwrap_or_default(),
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            WorkersCommand::Spawn {
                runtime,
                label,
                cwd,
                tty,
                env,
                argv,
            } => {
                let mut vars = serde_json::Map::new();
                for e in env {
                    let Some((k, v)) = e.split_once('=') else {
                        bail!("--env expects NAME=VALUE, got {e:?}");
                    };
                    vars.insert(k.to_owned(), v.into());
                }
                // Our directory means something only on the embedded runtime (this host);
                // elsewhere the runtime's workspace is the default.
                let cwd = match cwd {
                    Some(c) => Some(c),
                    None if runtime == "local" => std::env::current_dir()
                        .ok()
                        .map(|d| d.display().to_string()),
                    None => None,
                };
                let request = serde_json::json!({
                    "argv": argv, "cwd": cwd, "tty": tty, "label": label, "env": vars,
                });
                let summary = http.spawn(&runtime, &request).await?;
                println!(
                    "{}/{}",
                    summary["runtime_id"].as_str().unwrap_or_default(),
                    summary["worker_id"].as_str().unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            }
            WorkersCommand::Stop { worker, reason } => {
                lifecycle(&http, "stop", &worker, reason.as_deref()).await
            }
            WorkersCommand::Cancel { worker, reason } => {
                lifecycle(&http, "cancel", &worker, reason.as_deref()).await
            }
        }
    })
}

async fn lifecycle(
    http: &BackendHttp,
    action: &str,
    worker: &str,
    reason: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (rt, w) = split_worker(worker)?;
    let r = http.lifecycle(&rt, &w, action, reason).await?;
    for d in &r.diagnostics {
        eprintln!("baton: [{}] {}", d.code, d.message);
    }
    println!("{}", r.state);
    Ok(if r.state == "accepted" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `baton attach RUNTIME/WORKER`: streams output live (stdout and stderr of the worker to ours),
/// sends typed lines as input, resumes across backend restarts; Ctrl-C or end of stdin detaches
/// without stopping the worker. Exits with the worker's exit code when it ends.
pub fn attach_main(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (rt, w) = split_worker(&args.worker)?;
    let mut target = BackendTarget::new(args.backend.url.clone(), rt, w);
    target.token = token(&args.backend)?;
    target.tls = tls(&args.backend)?;
    let options = ObserveOptions {
        max_reconnects: 20,
        transcript_limit: args.history,
        ..ObserveOptions::default()
    };
    runtime()?.block_on(async move {
        let mut observer = BackendObserver::connect(target, options).await?;
        // A worker that already ended sends no more events: stop once everything up to its
        // last event was shown.
        let path = format!(
            "/api/runtimes/{}/workers/{}",
            baton_client::backend::encode(&observer.target().runtime_id),
            baton_client::backend::encode(&observer.target().worker_id)
        );
        let summary = observer.http().call("GET", &path, None).await?;
        let ended = (summary["state"] != "running").then(|| {
            let last = summary["last_event_id"]
                .as_str()
                .and_then(decode_cursor)
                .unwrap_or(0);
            (last, final_code(&summary))
        });
        let mut seen = observer.start_cursor().and_then(decode_cursor).unwrap_or(0);
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdin_open = true;
        loop {
            while let Some(event) = observer.try_next_event() {
                if let BackendEvent::Event { cursor, .. } = &event {
                    seen = seen.max(decode_cursor(cursor).unwrap_or(0));
                }
                if let Some(code) = render(event) {
                    return Ok(code);
                }
            }
            if let Some((last, code)) = &ended
                && seen >= *last
            {
                let _ = std::io::stdout().flush();
                eprintln!(
                    "baton: worker ended: {}",
                    summary["status"].as_str().unwrap_or_default()
                );
                return Ok(*code);
            }
            tokio::select! {
                event = observer.next_event() => {
                    let Some(event) = event else {
                        eprintln!("baton: observation ended");
                        return Ok(ExitCode::from(1));
                    };
                    if let BackendEvent::Event { cursor, .. } = &event {
                        seen = seen.max(decode_cursor(cursor).unwrap_or(0));
                    }
                    if let Some(code) = render(event) {
                        return Ok(code);
                    }
                }
                line = stdin.next_line(), if stdin_open => match line {
                    Ok(Some(line)) => {
                        match observer.send_input("user", &line).await {
                            Ok(r) if r.state == "accepted" => {}
                            Ok(r) => {
                                for d in r.diagnostics {
                                    eprintln!("baton: input {}: [{}] {}", r.state, d.code, d.message);
                                }
                            }
                            Err(e) => eprintln!("baton: input failed: {e}"),
                        }
                    }
                    _ => stdin_open = false,
                },
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("baton: detached (the worker keeps running)");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    })
}

fn final_code(summary: &serde_json::Value) -> ExitCode {
    if summary["state"] == "exited" {
        exit_code(&summary["exit_code"])
    } else {
        ExitCode::from(1)
    }
}

/// Prints one event; returns the exit code when the worker ended.
fn render(event: BackendEvent) -> Option<ExitCode> {
    let mut out = std::io::stdout();
    match event {
        BackendEvent::Transcript(item) => match item.role.as_str() {
            "stderr" => eprintln!("{}", item.content),
            "assistant" => {
                let _ = writeln!(out, "{}", item.content);
            }
            role => eprintln!("[{role}] {}", item.content),
        },
        BackendEvent::Snapshot { worker, .. } => {
            eprintln!(
                "baton: attached to {}/{} ({})",
                worker["runtime_id"].as_str().unwrap_or_default(),
                worker["worker_id"].as_str().unwrap_or_default(),
                worker["status"].as_str().unwrap_or_default()
            );
            if worker["state"] != "running" {
                return Some(exit_code(&worker["exit_code"]));
            }
        }
        BackendEvent::Event { payload, .. } => match payload["type"].as_str() {
            Some("output") => {
                let text = payload["text"].as_str().unwrap_or_default();
                if payload["stream"] == "stderr" {
                    eprint!("{text}");
                } else {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
            }
            Some("exit") => {
                let _ = out.flush();
                eprintln!(
                    "baton: worker ended: {}",
                    payload["status"].as_str().unwrap_or_default()
                );
                return Some(exit_code(&payload["exit_code"]));
            }
            Some("status") if payload["state"] == "lost" => {
                eprintln!("baton: worker lost (the backend restarted while it ran)");
                return Some(ExitCode::from(1));
            }
            _ => {}
        },
        BackendEvent::Diagnostic { code, message } => eprintln!("baton: [{code}] {message}"),
    }
    None
}

fn exit_code(v: &serde_json::Value) -> ExitCode {
    match v.as_i64() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    }
}
