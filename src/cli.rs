//! The subcommands of `keyledger` (docs/api.md, "Command line"). Each
//! subcommand takes the options it uses: the database is global, the
//! long-running commands take [`Settings`], the ones that print links take
//! [`Links`].

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use keyledger_api::{AppState, Surface};
use keyledger_events::domain::{
    key::{self, CreateKeyRequest, SecretSource},
    org::{self, ChangePlanRequest, CreateOrgRequest},
    ApiKey, KeyCommand, KeyId, KeyType, Org, OrgCommand, OrgId,
};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::log::{self, EventMeta};
use keyledger_events::read_model::{self, KeyRow};
use keyledger_events::representation;
use keyledger_events::shutdown::ShutdownSignal;
use keyledger_workers::jobs::scheduler;
use keyledger_workers::tailing::{lag::LagMonitor, replay};
use keyledger_workers::{metrics::WorkerMetrics, KafkaProjector, Projector, Relay};
use serde_json::json;
use sqlx::PgPool;

use crate::db;
use crate::settings::{DataDir, Database, LinkBase, Links, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "keyledger",
    version,
    about = "Issue, verify and govern API keys; every change is an event."
)]
pub struct Cli {
    #[command(flatten)]
    pub database: Database,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations (every other command also does).
    Migrate,
    /// API and workers in one process, on PostgreSQL alone (embedded mode).
    Dev(Box<Settings>),
    /// The HTTP API only.
    Serve(Box<Settings>),
    /// The workers only: projector (with Kafka: outbox relay and consumer),
    /// scheduled jobs, the mailer and webhook deliveries.
    Work(Box<Settings>),
    /// Rebuild every read model from the event log and swap it in.
    Replay {
        /// Compare a rebuild with the live read models instead; exit 1 on a difference.
        #[arg(long)]
        check: bool,
    },
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCli),
    /// The customer portal.
    #[command(subcommand)]
    Portal(PortalCli),
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
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        links: Links,
        #[command(flatten)]
        base: LinkBase,
    },
    /// Change an organization's plan.
    SetPlan {
        org_id: String,
        plan: String,
        #[arg(long)]
        rate_limit: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortalCli {
    /// Print a sign-in link to an organization's portal (single use, valid 5 minutes).
    Link {
        org_id: String,
        /// The person it is for, recorded as the actor `portal:<user>` of their changes.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        links: Links,
        #[command(flatten)]
        base: LinkBase,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // A task still blocked in a client library (a broker that vanished) must
    // not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        // The driver logs the value of a connect parameter it does not know;
        // `db::for_driver` removes those first, and this keeps any it missed
        // out of the log whatever RUST_LOG says.
        .add_directive("sqlx_postgres::options=error".parse().expect("a valid directive"));
    // Colours only for a terminal: log files and collectors get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Refuse before touching anything when the hash key is missing.
    let server = match cli.command {
        Command::Serve(ref settings) | Command::Work(ref settings) => {
            Some((settings.required_hash_key()?, settings.environment()?))
        }
        Command::Dev(ref settings) => Some((settings.local_hash_key(true)?, settings.environment()?)),
        _ => None,
    };
    let with_api = !matches!(cli.command, Command::Work(_));
    let with_workers = !matches!(cli.command, Command::Serve(_));
    let pool = db::connect(cli.database.database_url.expose()).await?;
    match cli.command {
        Command::Migrate => {
            println!("migrations applied");
        }
        Command::Dev(settings) | Command::Serve(settings) | Command::Work(settings) => {
            let (hash_key, environment) = server.expect("checked above");
            let mut state = AppState::new(pool, hash_key, environment, settings.api()?);
            state.kafka = settings.kafka();
            state.routes = std::sync::Arc::new(settings.route_table()?);
            serve(&settings, state, with_api, with_workers).await?;
        }
        Command::Org(OrgCli::Create {
            name,
            plan,
            rate_limit,
            alert_emails,
            data,
            links,
            base,
        }) => {
            let hash_key = data.local_hash_key(false)?;
            let mut created = create_org(&pool, hash_key, name, plan, rate_limit, alert_emails).await?;
            let org_id = created["org"]["id"].as_str().unwrap_or_default().to_owned();
            let link = portal_link(&links, &base, &pool, &org_id, None).await?;
            created["portal_url"] = json!(link.url);
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
            let command = OrgCommand::ChangePlan(ChangePlanRequest { plan, rate_limit }.parse());
            let changed = handler::execute::<Org>(&pool, &org::stream_id(id), command, &cli_meta(), |_| Ok(()))
                .await
                .map_err(explain)?;
            // What the command decided, not a read after its commit.
            let org = changed.state.context("no such organization")?;
            let org = read_model::OrgRow::from_aggregate(&org, changed.version);
            println!("{}", serde_json::to_string_pretty(&representation::org_object(&org))?);
        }
        Command::Portal(PortalCli::Link {
            org_id,
            user,
            links,
            base,
        }) => {
            let link = portal_link(&links, &base, &pool, &org_id, user.as_deref()).await?;
            println!("{}", link.url);
            eprintln!(
                "single use, valid until {} (then run this again)",
                representation::rfc3339(link.expires_at)
            );
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

/// A sign-in link to an organization's portal, for `user` if given.
async fn portal_link(
    links: &Links,
    base: &LinkBase,
    pool: &PgPool,
    org_id: &str,
    user: Option<&str>,
) -> anyhow::Result<keyledger_api::portal::session::SignInLink> {
    let id: OrgId = org_id
        .parse()
        .map_err(|_| anyhow::anyhow!("'{org_id}' is not an organization id"))?;
    if read_model::org_by_id(pool, id).await?.is_none() {
        bail!("no organization {org_id}");
    }
    let user = user
        .map(keyledger_events::domain::org::EmailAddress::parse)
        .transpose()
        .map_err(|problem| anyhow::anyhow!("--user: {problem}"))?;
    keyledger_api::portal::session::mint_link(
        pool,
        &links.public_url(&base.listen)?,
        id,
        user.as_ref(),
        Utc::now(),
        links.lifetime(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("minting the sign-in link: {e}"))
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

/// Creates an organization and its first admin key in one transaction;
/// returns the JSON that `org create` prints (the key's secret appears here
/// and nowhere else), built from what that transaction decided — nothing is
/// read back after the commit, so a committed organization is never
/// reported as a failure (nor exists without its admin key).
pub async fn create_org(
    pool: &PgPool,
    hash_key: keyledger_events::domain::HashKey,
    name: String,
    plan: String,
    rate_limit: Option<u32>,
    alert_emails: Vec<String>,
) -> anyhow::Result<serde_json::Value> {
    let org_id = OrgId::new();
    let request = CreateOrgRequest {
        org_id,
        name,
        plan,
        rate_limit,
        alert_emails,
    };
    let command = OrgCommand::Create(request.parse().map_err(|e| explain(e.into()))?);
    let meta = cli_meta();
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    let secret = SecretSource { random, hash_key };
    let key_id = KeyId::new();
    let mut tx = pool.begin().await?;
    let org_stream = org::stream_id(org_id);
    let org = handler::decide_on::<Org>(&mut tx, &org_stream, command, &meta, |_| Ok(()))
        .await
        .map_err(explain)?
        .append(&mut tx)
        .await
        .map_err(explain)?;
    let org_version = org.version;
    let org = org.state.context("the organization was not created")?;
    let request = CreateKeyRequest {
        key_id,
        org_id,
        name: "Admin key".into(),
        key_type: KeyType::Secret.as_str().into(),
        scopes: None,
        expires_at: None,
        rotation_days: org.rotation_days,
        allowed_ips: None,
        secret: secret.clone(),
    };
    let command = KeyCommand::Create(Box::new(
        request.parse(meta.occurred_at).map_err(|e| explain(e.into()))?,
    ));
    let key = handler::decide_on::<ApiKey>(&mut tx, &key::stream_id(key_id), command, &meta, |_| Ok(()))
        .await
        .map_err(explain)?
        .append(&mut tx)
        .await
        .map_err(explain)?;
    let key_version = key.version;
    let key = key.state.context("the key was not created")?;
    tx.commit().await?;
    let mut object = representation::key_object(&KeyRow::from_aggregate(&key, key_version), Utc::now());
    object["key"] = json!(secret.issue(KeyType::Secret).0.expose());
    Ok(
        json!({"org": representation::org_object(&read_model::OrgRow::from_aggregate(&org, org_version)), "key": object}),
    )
}

async fn audit(pool: &PgPool, key_id: &str, at: Option<&str>) -> anyhow::Result<ExitCode> {
    let id: KeyId = key_id
        .parse()
        .map_err(|_| anyhow::anyhow!("'{key_id}' is not a key id"))?;
    let stream = key::stream_id(id);
    let Some(at) = at else {
        let events = log::read_stream_without_usage(pool, &stream, None).await?;
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
            eprintln!("key {key_id} did not exist at {}", representation::rfc3339(at));
            Ok(ExitCode::from(1))
        }
        Some(key) => {
            let mut object = representation::key_object(&KeyRow::from_aggregate(&key, loaded.version), at);
            object["as_of"] = json!(representation::rfc3339(at));
            object["version"] = json!(loaded.version);
            if key.deleted {
                object["status"] = json!("deleted");
            }
            println!("{}", serde_json::to_string_pretty(&object)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long the background work gets to stop after the listeners have.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(7);

/// Runs the API and/or the workers until Ctrl-C or SIGTERM. `work` serves
/// `/healthz`, `/readyz` and `/metrics` on its own listener
/// (`KEYLEDGER_WORK_LISTEN`, else `--listen`); `dev` serves them, the
/// workers' projection lag included, on the API's.
async fn serve(settings: &Settings, mut state: AppState, with_api: bool, with_workers: bool) -> anyhow::Result<()> {
    let stop = ShutdownSignal::new();
    let stopped = stop.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    let mut metrics: Vec<keyledger_api::ops::MetricsSource> = Vec::new();
    if with_workers {
        // Both are checked before anything starts: a typo fails at once.
        let schedules = settings.schedules()?;
        let mailer = settings.mailer(state.pool.clone(), state.hash_key.clone())?;
        let listen_reachable = with_api
            && settings
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| !a.ip().is_unspecified());
        if settings.links.public_url.is_none() && !listen_reachable {
            tracing::warn!(
                public_url = %format!("http://{}", settings.listen),
                "KEYLEDGER_PUBLIC_URL is not set: links in confirmation emails point at the listen address; \
                 set it to the address users reach the API at"
            );
        }
        if let Err(e) = keyledger_workers::alerts::recipients::warn_unusable(&state.pool).await {
            tracing::warn!(error = %e, "could not look for unusable alert addresses");
        }
        // Job runs and the mail queue, on this process's /metrics.
        let worker_metrics = Arc::new(WorkerMetrics::default());
        tasks.spawn(scheduler::run(
            state.pool.clone(),
            schedules,
            worker_metrics.jobs.clone(),
            stopped.clone(),
        ));
        tasks.spawn(mailer.run(stopped.clone()));
        let webhooks = settings.webhooks(state.pool.clone(), state.hash_key.clone());
        tasks.spawn(webhooks.run(stopped.clone()));
        let lag = Arc::new(match &state.kafka {
            Some(_) => LagMonitor::kafka(),
            None => LagMonitor::embedded(),
        });
        match &state.kafka {
            Some(kafka) => {
                kafka.ensure_topics().await.context("creating the Kafka topics")?;
                let relay = Relay::new(state.pool.clone(), kafka).context("Kafka producer")?;
                let consumer = KafkaProjector::new(state.pool.clone(), kafka).context("Kafka consumer")?;
                tasks.spawn(relay.run(stopped.clone()));
                tasks.spawn(consumer.run(stopped.clone(), Some(lag.clone())));
                tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, "workers in Kafka mode");
            }
            None => {
                tasks.spawn(Projector::read_models(state.pool.clone()).run(stopped.clone()));
            }
        }
        let (queue, pool, queue_stopped) = (worker_metrics.mail.clone(), state.pool.clone(), stopped.clone());
        tasks.spawn(async move { queue.run(pool, queue_stopped).await });
        metrics.push(Arc::new(move |out: &mut String| worker_metrics.render(out)));
        let (sampler, pool, stopped) = (lag.clone(), state.pool.clone(), stopped.clone());
        tasks.spawn(async move { sampler.run(pool, stopped).await });
        metrics.push(Arc::new(move |out: &mut String| lag.render(out)));
    }
    let mut servers = Vec::new();
    if with_api {
        // Both addresses are bound before anything is served: a typo fails at once.
        let internal = settings.internal_listen.as_deref().filter(|a| !a.trim().is_empty());
        let mut listeners = vec![(
            bind(&settings.listen)?,
            if internal.is_some() {
                Surface::Public
            } else {
                Surface::All
            },
        )];
        if let Some(address) = internal {
            listeners.push((bind(address)?, Surface::Internal));
            if state.settings.trusted_proxies.is_empty() {
                tracing::warn!(
                    "KEYLEDGER_INTERNAL_LISTEN is set but KEYLEDGER_TRUSTED_PROXIES is empty: a proxy calling \
                     /v1/auth there is taken for the client, so every client behind it shares one guessing guard \
                     and one client's invalid keys lock out all of them. Set KEYLEDGER_TRUSTED_PROXIES to your \
                     proxy's address"
                );
            }
        }
        state.extra_metrics = metrics;
        tasks.spawn(state.clone().run_background(stopped.clone()));
        for (listener, surface) in listeners {
            let address = listener.local_addr()?;
            let server = keyledger_api::server_of(listener, state.clone(), surface)?;
            servers.push(server.handle());
            tasks.spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            match surface {
                Surface::Internal => {
                    tracing::info!(%address, "keyledger internal API listening (/v1/verify, /v1/auth, /metrics)")
                }
                _ => tracing::info!(%address, "keyledger API listening"),
            }
        }
    } else {
        let wanted = settings.work_listen.as_deref().unwrap_or(&settings.listen);
        let listener = std::net::TcpListener::bind(wanted).with_context(|| {
            format!("cannot listen on {wanted} (set KEYLEDGER_WORK_LISTEN to another address for `work`)")
        })?;
        let address = listener.local_addr()?;
        let (database, pool, probe_stopped) = (state.database.clone(), state.pool.clone(), stopped.clone());
        tasks.spawn(async move { database.run_probe(pool, probe_stopped).await });
        let ops = keyledger_api::ops::OpsState {
            pool: state.pool.clone(),
            kafka: state.kafka.clone(),
            database: state.database.clone(),
            metrics,
        };
        let server = keyledger_api::ops::server(listener, ops)?;
        servers.push(server.handle());
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "operations listener failed");
            }
        });
        tracing::info!(%address, "keyledger work listening (/healthz, /readyz, /metrics)");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    // Requests in flight finish first; then the background work stops (and
    // flushes the last usage counts) — within SHUTDOWN_GRACE, whatever the
    // broker or the mail server do.
    for server in servers {
        server.stop(true).await;
    }
    stop.fire();
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(left = tasks.len(), "background work did not stop in time; exiting without it");
                break;
            }
        }
    }
    Ok(())
}

fn bind(address: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).with_context(|| format!("cannot listen on {address}"))
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
