//! The subcommands of `keyledger` (API.md, "CLI").

use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use keyledger_api::AppState;
use keyledger_events::domain::{
    key::{self, CreateKey, SecretSource},
    org::{self, CreateOrg},
    ApiKey, KeyCommand, KeyId, KeyType, Org, OrgCommand, OrgId,
};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::log::{self, EventMeta};
use keyledger_events::read_model::{self, KeyRow};
use keyledger_workers::{replay, scheduler, KafkaProjector, Projector, Relay};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{db, settings::Settings};

#[derive(Debug, Parser)]
#[command(
    name = "keyledger",
    version,
    about = "Issue, verify and govern API keys; every change is an event."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations (every other command also does).
    Migrate,
    /// API and workers in one process, on PostgreSQL alone (embedded mode).
    Dev,
    /// The HTTP API only.
    Serve,
    /// The workers only: projector (with Kafka: outbox relay and consumer),
    /// scheduled jobs and the mailer.
    Work,
    /// Rebuild every read model from the event log and swap it in.
    Replay {
        /// Compare a rebuild with the live read models instead; exit 1 on a difference.
        #[arg(long)]
        check: bool,
    },
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCli),
    /// A key's history, or its state as of a moment, rebuilt from events alone.
    Audit {
        key_id: String,
        /// RFC 3339 time, e.g. 2026-11-26T10:00:00Z.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCli {
    /// Create an organization and its first admin key (printed once, as JSON).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free")]
        plan: String,
        /// Custom per-key limit (requests per minute), enterprise plan only.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Where alert emails go (repeatable).
        #[arg(long = "alert-email")]
        alert_emails: Vec<String>,
    },
    /// Change an organization's plan.
    SetPlan {
        org_id: String,
        plan: String,
        #[arg(long)]
        rate_limit: Option<u32>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // Colours only for a terminal: log files and collectors get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    // Refuse before touching anything when the hash key is missing.
    let hash_key = match cli.command {
        Command::Serve | Command::Work => Some(settings.required_hash_key()?),
        Command::Dev => Some(settings.local_hash_key(true)?),
        _ => None,
    };
    let environment = settings.environment()?;
    let pool = db::connect(&settings.database_url).await?;
    match cli.command {
        Command::Migrate => {
            println!("migrations applied");
        }
        Command::Dev | Command::Serve | Command::Work => {
            let with_api = !matches!(cli.command, Command::Work);
            let with_workers = !matches!(cli.command, Command::Serve);
            // Checked before anything starts, whichever process writes links.
            settings.public_url()?;
            let mut state = AppState::new(pool, hash_key.expect("checked above"), environment, settings.api());
            state.kafka = settings.kafka();
            state.routes = std::sync::Arc::new(settings.route_table()?);
            serve(&settings, state, with_api, with_workers).await?;
        }
        Command::Org(OrgCli::Create {
            name,
            plan,
            rate_limit,
            alert_emails,
        }) => {
            let hash_key = settings.local_hash_key(false)?;
            let created = create_org(&pool, hash_key, name, plan, rate_limit, alert_emails).await?;
            println!("{}", serde_json::to_string_pretty(&created)?);
        }
        Command::Org(OrgCli::SetPlan {
            org_id,
            plan,
            rate_limit,
        }) => {
            let id: OrgId = org_id
                .parse()
                .map_err(|_| anyhow::anyhow!("'{org_id}' is not an organization id"))?;
            let command = OrgCommand::ChangePlan { plan, rate_limit };
            handler::execute::<Org>(&pool, &org::stream_id(id), command, &cli_meta(), |_| Ok(()))
                .await
                .map_err(explain)?;
            let org = read_model::org_by_id(&pool, &id.to_string())
                .await?
                .context("organization vanished")?;
            println!("{}", serde_json::to_string_pretty(&org.to_json())?);
        }
        Command::Audit { key_id, at } => return audit(&pool, &key_id, at.as_deref()).await,
        Command::Replay { check: false } => {
            let applied = replay::rebuild(&pool).await?;
            println!(
                "rebuilt {} read models from {applied} events",
                replay::READ_MODELS.len()
            );
        }
        Command::Replay { check: true } => {
            let differences = replay::check(&pool).await?;
            if differences.is_empty() {
                println!("read models match the event log");
            } else {
                for (table, row) in &differences.only_live {
                    println!("{table}: live row differs from the log: {row}");
                }
                for (table, row) in &differences.only_rebuilt {
                    println!("{table}: the log says: {row}");
                }
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cli_meta() -> EventMeta {
    EventMeta {
        actor: "cli".into(),
        request_id: None,
        occurred_at: Utc::now(),
    }
}

/// A command's refusal in words for the terminal.
fn explain(e: HandlerError) -> anyhow::Error {
    match e {
        HandlerError::Domain(keyledger_events::domain::DomainError::Validation(details)) => {
            let problems: Vec<String> = details
                .0
                .iter()
                .map(|(field, p)| format!("{field}: {}", p.join("; ")))
                .collect();
            anyhow::anyhow!("invalid input — {}", problems.join(", "))
        }
        HandlerError::Domain(keyledger_events::domain::DomainError::NotFound) => anyhow::anyhow!("not found"),
        other => anyhow::Error::new(other),
    }
}

/// Creates an organization and its first admin key; returns the JSON that
/// `org create` prints (the key's secret appears here and nowhere else).
pub async fn create_org(
    pool: &PgPool,
    hash_key: keyledger_events::domain::HashKey,
    name: String,
    plan: String,
    rate_limit: Option<u32>,
    alert_emails: Vec<String>,
) -> anyhow::Result<serde_json::Value> {
    let org_id = OrgId::new();
    let command = OrgCommand::Create(CreateOrg {
        org_id,
        name,
        plan,
        rate_limit,
        alert_emails,
    });
    let meta = cli_meta();
    handler::execute::<Org>(pool, &org::stream_id(org_id), command, &meta, |_| Ok(()))
        .await
        .map_err(explain)?;
    let org = read_model::org_by_id(pool, &org_id.to_string())
        .await?
        .context("organization vanished")?;
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    let secret = SecretSource { random, hash_key };
    let key_id = KeyId::new();
    let command = KeyCommand::Create(Box::new(CreateKey {
        key_id,
        org_id,
        name: "Admin key".into(),
        key_type: KeyType::Secret.as_str().into(),
        scopes: None,
        expires_at: None,
        rotation_days: org.rotation_days.max(0) as u32,
        secret: secret.clone(),
    }));
    handler::execute::<ApiKey>(pool, &key::stream_id(key_id), command, &meta, |_| Ok(()))
        .await
        .map_err(explain)?;
    let row = read_model::key_by_id(pool, &org.id, &key_id.to_string())
        .await?
        .context("key vanished")?;
    let mut key = row.to_json(Utc::now());
    key["key"] = json!(secret.issue(KeyType::Secret).0.expose());
    Ok(json!({"org": org.to_json(), "key": key}))
}

async fn audit(pool: &PgPool, key_id: &str, at: Option<&str>) -> anyhow::Result<ExitCode> {
    let id: KeyId = key_id
        .parse()
        .map_err(|_| anyhow::anyhow!("'{key_id}' is not a key id"))?;
    let stream = key::stream_id(id);
    let Some(at) = at else {
        let events = log::read_stream_without(pool, &stream, None, handler::USAGE_EVENT).await?;
        if events.is_empty() {
            bail!("no events for key {key_id}");
        }
        let history: Vec<_> = events.iter().map(|e| e.public_json()).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"key_id": key_id, "events": history}))?
        );
        return Ok(ExitCode::SUCCESS);
    };
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("--at '{at}' is not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)"))?;
    let loaded = handler::load::<ApiKey>(pool, &stream, Some(at)).await?;
    match loaded.state {
        None => {
            eprintln!("key {key_id} did not exist at {}", read_model::rfc3339(at));
            Ok(ExitCode::from(1))
        }
        Some(key) => {
            let mut object = KeyRow::from_aggregate(&key, loaded.version).to_json(at);
            object["as_of"] = json!(read_model::rfc3339(at));
            object["version"] = json!(loaded.version);
            if key.deleted {
                object["status"] = json!("deleted");
            }
            println!("{}", serde_json::to_string_pretty(&object)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the API and/or the workers until Ctrl-C or SIGTERM.
async fn serve(settings: &Settings, state: AppState, with_api: bool, with_workers: bool) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if with_workers {
        // Both are checked before anything starts: a typo fails at once.
        let schedules = settings.schedules()?;
        let mailer = settings.mailer(state.pool.clone(), state.hash_key.clone())?;
        let listen_reachable = with_api
            && settings
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| !a.ip().is_unspecified());
        if settings.public_url.is_none() && !listen_reachable {
            tracing::warn!(
                public_url = %format!("http://{}", settings.listen),
                "KEYLEDGER_PUBLIC_URL is not set: links in confirmation emails point at the listen address; \
                 set it to the address users reach the API at"
            );
        }
        if let Err(e) = keyledger_workers::recipients::warn_unusable(&state.pool).await {
            tracing::warn!(error = %e, "could not look for unusable alert addresses");
        }
        tasks.spawn(scheduler::run(state.pool.clone(), schedules, stopped.clone()));
        tasks.spawn(mailer.run(stopped.clone()));
        match &state.kafka {
            Some(kafka) => {
                kafka.ensure_topics().await.context("creating the Kafka topics")?;
                let relay = Relay::new(state.pool.clone(), kafka).context("Kafka producer")?;
                let consumer = KafkaProjector::new(state.pool.clone(), kafka).context("Kafka consumer")?;
                tasks.spawn(relay.run(stopped.clone()));
                tasks.spawn(consumer.run(stopped.clone()));
                tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, "workers in Kafka mode");
            }
            None => {
                tasks.spawn(Projector::read_models(state.pool.clone()).run(stopped.clone()));
            }
        }
    }
    let server = if with_api {
        let listener = std::net::TcpListener::bind(&settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        tasks.spawn(state.clone().run_background(stopped.clone()));
        let server = keyledger_api::server(listener, state)?;
        let handle = server.handle();
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%address, "keyledger API listening");
        Some(handle)
    } else {
        None
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    // Requests in flight finish first; then the background work stops (and
    // flushes the last usage counts).
    if let Some(handle) = server {
        handle.stop(true).await;
    }
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
