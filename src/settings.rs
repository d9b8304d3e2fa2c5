//! One typed settings struct: every option is a flag or an environment
//! variable, with defaults that work on a developer machine. The hash key
//! is a secret: it is read from the environment (or, for `dev`, from the
//! data folder) and never printed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use keyledger_events::domain::{Environment, HashKey};
use keyledger_workers::alerts::mailer::{Links as MailLinks, Mailer, Transport};
use keyledger_workers::jobs::{scheduler::Schedules, Job};
use keyledger_workers::{webhooks::client::WebhookClient, Webhooks};

pub const HASH_KEY_VAR: &str = "KEYLEDGER_HASH_KEY";
const HASH_KEY_FILE: &str = "hash_key";

/// The database, which every command uses (a global option).
#[derive(Debug, Clone, Args)]
pub struct Database {
    /// PostgreSQL connection string (the database is created if missing); it
    /// may hold a password, so its value is never printed.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/keyledger"
    )]
    pub database_url: DatabaseUrl,
}

/// The folder of local state: `dev` keeps its hash key there, and `org
/// create` reads it from there when `KEYLEDGER_HASH_KEY` is unset.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Folder for local state: the dev hash key, emails written as files.
    #[arg(long, env = "KEYLEDGER_DATA_DIR", default_value = "./.keyledger")]
    pub data_dir: PathBuf,
}

/// The links keyledger sends or prints (portal sign-in links, confirmation
/// links): the long-running commands, `org create` and `portal link`.
#[derive(Debug, Clone, Args)]
pub struct Links {
    /// The base of every link keyledger sends or prints (portal sign-in links;
    /// alert recipients' confirmation links, which `work` and `dev` write), as
    /// users reach this deployment; default: http://<listen address>.
    #[arg(long, env = "KEYLEDGER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds a portal sign-in link works after it is minted (single use).
    #[arg(long, env = "KEYLEDGER_PORTAL_LINK_SECONDS", default_value_t = 300)]
    pub portal_link_seconds: u64,
}

/// The listen address as the default base of links, for the commands that
/// print links but listen on nothing (`org create`, `portal link`): read
/// from `KEYLEDGER_LISTEN` like the servers', and left out of their help.
#[derive(Debug, Clone, Args)]
pub struct LinkBase {
    #[arg(
        long = "listen",
        env = "KEYLEDGER_LISTEN",
        default_value = "127.0.0.1:8080",
        hide = true
    )]
    pub listen: String,
}

/// The options of the long-running commands (`dev`, `serve`, `work`).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long = "listen", env = "KEYLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A second address, for the platform's own servers and proxies: when set,
    /// /v1/verify, /v1/auth and /metrics are served there only (the public
    /// listener answers them 404). Unset: everything on the public listener.
    #[arg(long = "internal-listen", env = "KEYLEDGER_INTERNAL_LISTEN")]
    pub internal_listen: Option<String>,
    /// Where /v1/auth reads the original request: nginx (X-Original-Method,
    /// X-Original-URI), traefik (X-Forwarded-Method, X-Forwarded-Uri) or envoy
    /// (the check request's method and its path after /v1/auth).
    #[arg(long = "forward-auth", env = "KEYLEDGER_FORWARD_AUTH", default_value = "nginx")]
    pub forward_auth: keyledger_api::forward_auth::ForwardAuthStyle,
    #[command(flatten)]
    pub data: DataDir,
    /// Kafka brokers (host:port,…); unset: embedded mode, no Kafka.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Forward-auth route table: a file of 'METHODS PREFIX SCOPE' lines; default:
    /// GET,HEAD on /api/experiences and /api/consumers need read:…, other methods
    /// write:…, /api/analytics read:analytics, anything else admin.
    #[arg(long, env = "KEYLEDGER_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Seconds between appends of usage counts (`key.used` events).
    #[arg(long, env = "KEYLEDGER_USAGE_FLUSH_SECONDS", default_value_t = 5)]
    pub usage_flush_seconds: u64,
    /// Seconds a cached key is trusted without a change notification.
    #[arg(long, env = "KEYLEDGER_CACHE_TTL_SECONDS", default_value_t = 10)]
    pub cache_ttl_seconds: u64,
    /// Invalid keys one client address may send per minute before it is refused.
    #[arg(long, env = "KEYLEDGER_FAILED_ATTEMPTS_PER_MINUTE", default_value_t = 20)]
    pub failed_attempts_per_minute: u32,
    /// Reverse proxies (comma-separated addresses or CIDR ranges) whose
    /// X-Real-IP / X-Forwarded-For name the client; none by default.
    #[arg(long, env = "KEYLEDGER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<TrustedProxy>,
    #[command(flatten)]
    pub links: Links,
    /// Keys (not deleted) one organization may have; one more answers 403 quota_exceeded.
    #[arg(
        long,
        env = "KEYLEDGER_MAX_KEYS_PER_ORG",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_keys_per_org: u64,
    /// Webhook endpoints one organization may have; one more answers 403 quota_exceeded.
    #[arg(
        long,
        env = "KEYLEDGER_MAX_WEBHOOKS_PER_ORG",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_webhooks_per_org: u64,
    /// Allow webhook endpoints on plain http and on loopback, private,
    /// link-local and metadata addresses (development, private networks).
    #[arg(
        long,
        env = "KEYLEDGER_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub webhook_allow_private: bool,
    /// Seconds before the first retry of a failed webhook delivery (doubling, up to an hour, for about a day).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_RETRY_SECONDS", default_value_t = 5)]
    pub webhook_retry_seconds: u64,
    /// The environment (live or test) that `/v1/auth` requires.
    #[arg(long, env = "KEYLEDGER_ENVIRONMENT", default_value = "live")]
    pub environment: String,
    /// SMTP server for alert emails (smtp://host:port, smtps://user:pass@host,
    /// …?tls=required); unset: emails are written as `.eml` files to the data folder.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<SmtpUrl>,
    /// The sender of alert emails.
    #[arg(
        long,
        env = "KEYLEDGER_MAIL_FROM",
        default_value = "keyledger <alerts@keyledger.localhost>"
    )]
    pub mail_from: String,
    /// Seconds before the first retry of an email that could not be sent (doubling, up to an hour).
    #[arg(long, env = "KEYLEDGER_MAIL_RETRY_SECONDS", default_value_t = 30)]
    pub mail_retry_seconds: u64,
    /// Cron expression (six fields, seconds first) of the expiry job.
    #[arg(long, env = "KEYLEDGER_SCHEDULE_EXPIRY")]
    pub schedule_expiry: Option<String>,
    /// Cron expression of the rotation reminders.
    #[arg(long, env = "KEYLEDGER_SCHEDULE_ROTATION")]
    pub schedule_rotation: Option<String>,
    /// Cron expression of the usage alerts (rate limit, error rate, unusual activity).
    #[arg(long, env = "KEYLEDGER_SCHEDULE_USAGE_ALERTS")]
    pub schedule_usage_alerts: Option<String>,
    /// Cron expression of the unused-keys digest.
    #[arg(long, env = "KEYLEDGER_SCHEDULE_UNUSED_KEYS")]
    pub schedule_unused_keys: Option<String>,
    /// Seconds cached keys keep their answers while PostgreSQL is unreachable
    /// (0: verification fails closed at once).
    #[arg(long, env = "KEYLEDGER_OUTAGE_GRACE_SECONDS", default_value_t = 60)]
    pub outage_grace_seconds: u64,
    /// A JSON file of the public keys leak reports (POST /v1/leaks) must be
    /// signed with, in the format of GitHub's secret scanning public keys
    /// document; unset: /v1/leaks answers 503 (not configured).
    #[arg(long, env = "KEYLEDGER_LEAK_REPORT_KEYS")]
    pub leak_report_keys: Option<PathBuf>,
    /// Address of `keyledger work`'s listener (/healthz, /readyz, /metrics);
    /// default: the --listen address. `dev` serves them on the API's.
    #[arg(long, env = "KEYLEDGER_WORK_LISTEN")]
    pub work_listen: Option<String>,
}

impl Settings {
    pub fn api(&self) -> anyhow::Result<keyledger_api::ApiSettings> {
        Ok(keyledger_api::ApiSettings {
            cache_ttl: std::time::Duration::from_secs(self.cache_ttl_seconds.max(1)),
            failed_attempts_per_minute: self.failed_attempts_per_minute.max(1),
            usage_flush: std::time::Duration::from_secs(self.usage_flush_seconds.max(1)),
            trusted_proxies: self.trusted_proxies.iter().filter_map(|p| p.0).collect(),
            forward_auth: self.forward_auth,
            outage_grace: std::time::Duration::from_secs(self.outage_grace_seconds),
            public_url: self.public_url()?,
            portal_link_lifetime: self.links.lifetime(),
            max_keys_per_org: self.max_keys_per_org,
            leak_report_keys: self.leak_report_keys()?,
            max_webhooks_per_org: self.max_webhooks_per_org,
            webhook_allow_private: self.webhook_allow_private,
            ..keyledger_api::ApiSettings::default()
        })
    }

    /// The accepted leak reporters' public keys, read once at start-up.
    fn leak_report_keys(&self) -> anyhow::Result<Option<std::sync::Arc<keyledger_api::leaks::LeakReportKeys>>> {
        let Some(path) = self.leak_report_keys.as_deref().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        let keys = keyledger_api::leaks::LeakReportKeys::load(path)
            .map_err(|e| anyhow::anyhow!("KEYLEDGER_LEAK_REPORT_KEYS: {e}"))?;
        Ok(Some(std::sync::Arc::new(keys)))
    }

    /// `KEYLEDGER_PUBLIC_URL` without a trailing slash, or the listen address.
    pub fn public_url(&self) -> anyhow::Result<String> {
        self.links.public_url(&self.listen)
    }

    pub fn route_table(&self) -> anyhow::Result<keyledger_api::route_table::RouteTable> {
        match &self.routes {
            None => Ok(keyledger_api::route_table::RouteTable::default()),
            Some(path) => {
                keyledger_api::route_table::RouteTable::load(path).map_err(|e| anyhow::anyhow!("route table {e}"))
            }
        }
    }

    pub fn kafka(&self) -> Option<keyledger_events::bus::KafkaSettings> {
        self.kafka_brokers
            .as_deref()
            .filter(|b| !b.trim().is_empty())
            .map(keyledger_events::bus::KafkaSettings::new)
    }

    /// Every job's cron schedule: the defaults, with the ones set here.
    pub fn schedules(&self) -> anyhow::Result<Schedules> {
        Schedules::new(&[
            (Job::Expiry, self.schedule_expiry.clone()),
            (Job::Rotation, self.schedule_rotation.clone()),
            (Job::UsageAlerts, self.schedule_usage_alerts.clone()),
            (Job::UnusedKeys, self.schedule_unused_keys.clone()),
        ])
        .map_err(anyhow::Error::msg)
    }

    /// The mailer: SMTP when `SMTP_URL` is set, else `.eml` files; its
    /// confirmation links made with `hash_key` on `KEYLEDGER_PUBLIC_URL`.
    pub fn mailer(&self, pool: sqlx::PgPool, hash_key: HashKey) -> anyhow::Result<Mailer> {
        let url = self.smtp_url.as_ref().map(|u| u.0.as_str());
        let transport = Transport::new(url, &self.data.data_dir)?;
        let links = MailLinks {
            hash_key,
            public_url: self.public_url()?,
        };
        let mut mailer = Mailer::new(pool, transport, &self.mail_from, links)?;
        mailer.first_backoff = std::time::Duration::from_secs(self.mail_retry_seconds.max(1));
        Ok(mailer)
    }

    /// The webhook worker: its secrets opened with `hash_key`.
    pub fn webhooks(&self, pool: sqlx::PgPool, hash_key: HashKey) -> Webhooks {
        let client = WebhookClient::new(self.webhook_allow_private);
        let mut webhooks = Webhooks::new(pool, hash_key, client);
        webhooks.first_backoff = std::time::Duration::from_secs(self.webhook_retry_seconds.max(1));
        webhooks
    }

    pub fn environment(&self) -> anyhow::Result<Environment> {
        Environment::parse(&self.environment)
            .with_context(|| format!("KEYLEDGER_ENVIRONMENT is '{}': use live or test", self.environment))
    }

    /// The hash key from `KEYLEDGER_HASH_KEY`; `serve` and `work` need it.
    pub fn required_hash_key(&self) -> anyhow::Result<HashKey> {
        match std::env::var(HASH_KEY_VAR) {
            Ok(text) => parse_hash_key(&text),
            Err(_) => bail!(
                "{HASH_KEY_VAR} is not set. keyledger stores only keyed hashes of API keys and needs the \
                 same hash key on every node: generate one with `openssl rand -hex 32` (64 hex characters), \
                 keep it in your secret store and set {HASH_KEY_VAR}. Losing it invalidates every key."
            ),
        }
    }

    /// The hash key from the environment, else the data folder's;
    /// generated there when neither exists.
    pub fn local_hash_key(&self, generate: bool) -> anyhow::Result<HashKey> {
        self.data.local_hash_key(generate)
    }
}

impl DataDir {
    /// The hash key from the environment, else the data folder's; with
    /// `generate`, one is created there when neither exists (`dev`).
    pub fn local_hash_key(&self, generate: bool) -> anyhow::Result<HashKey> {
        if let Ok(text) = std::env::var(HASH_KEY_VAR) {
            return parse_hash_key(&text);
        }
        let path = self.data_dir.join(HASH_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_hash_key(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => generate_hash_key(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no hash key: set {HASH_KEY_VAR}, or run `keyledger dev` once to keep one in {}",
                self.data_dir.display()
            ),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

impl Links {
    /// How long a sign-in link works.
    pub fn lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.portal_link_seconds)
    }

    /// `KEYLEDGER_PUBLIC_URL` without a trailing slash, or `http://<listen>`.
    pub fn public_url(&self, listen: &str) -> anyhow::Result<String> {
        let Some(url) = self.public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(format!("http://{listen}"));
        };
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        let plain = rest.is_some_and(|r| {
            !r.is_empty() && !r.starts_with('/') && !r.contains(['?', '#', '@']) && !r.contains(char::is_whitespace)
        });
        if !plain || !url.is_ascii() {
            bail!(
                "KEYLEDGER_PUBLIC_URL is '{url}': give the address users reach this deployment at, \
                 e.g. https://keys.example.com (http or https, no query, no credentials)"
            );
        }
        Ok(url.trim_end_matches('/').to_owned())
    }
}

/// One entry of `KEYLEDGER_TRUSTED_PROXIES`; an empty one (the variable
/// set to "") stands for no proxy.
#[derive(Debug, Clone, Copy)]
pub struct TrustedProxy(Option<keyledger_events::domain::IpRange>);

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" => Ok(TrustedProxy(None)),
            range => range.parse().map(|r| TrustedProxy(Some(r))),
        }
    }
}

/// The PostgreSQL URL, which may hold a password: it prints redacted.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(text.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", crate::db::redact(&self.0))
    }
}

/// The SMTP URL, which may hold a password: it never prints.
#[derive(Clone)]
pub struct SmtpUrl(String);

impl std::str::FromStr for SmtpUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SmtpUrl(text.to_owned()))
    }
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpUrl([redacted])")
    }
}

fn parse_hash_key(text: &str) -> anyhow::Result<HashKey> {
    HashKey::from_hex(text).with_context(|| format!("{HASH_KEY_VAR} is malformed"))
}

fn generate_hash_key(path: &Path) -> anyhow::Result<HashKey> {
    let mut bytes = [0u8; 32];
    getrandom_bytes(&mut bytes)?;
    let key = HashKey::from_bytes(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(path, &key.to_hex()).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a development hash key");
    Ok(key)
}

fn getrandom_bytes(bytes: &mut [u8]) -> anyhow::Result<()> {
    getrandom::getrandom(bytes).map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
