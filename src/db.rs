//! Connecting to PostgreSQL: create the database when it is missing, then
//! apply the migrations (every command does both). `DATABASE_URL` may hold
//! passwords, so it is parsed here before the driver sees it — the driver
//! logs the value of any parameter it does not know — and printed only
//! through [`redact`].

use anyhow::{bail, Context};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use url::Url;

/// How long a request waits for a pooled connection before it answers
/// `503 unavailable` (every connection busy). When the database is down the
/// API does not wait that long: the probe finds it within a quarter second
/// and waiting requests give up then (`db_health`).
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a pooled connection may sit idle and still be handed out
/// without a test; under load none does, so requests skip the round trip.
const IDLE_BEFORE_TEST: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let url = &for_driver(url)?;
    let exists = Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", redact(url)))?;
    if !exists {
        if let Err(e) = Postgres::create_database(url).await {
            // Another process may have created it in the meantime.
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
        tracing::info!(database = %redact(url), "created the database");
    }
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection just used answers without a test round trip; one that
        // sat idle (through a database restart, say) is tested first.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_TEST {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    keyledger_events::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}

/// The query parameters the PostgreSQL driver (sqlx 0.8) reads; it ignores
/// any other, logging its value.
const DRIVER_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Parameters whose values are printed in messages; any other prints as `***`.
const SHOWN_PARAMETERS: [&str; 11] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "host",
    "hostaddr",
    "port",
    "dbname",
];

fn driver_reads(name: &str) -> bool {
    DRIVER_PARAMETERS.contains(&name) || (name.starts_with("options[") && name.ends_with(']'))
}

/// A parameter name that might carry a secret.
fn secret_like(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "cred", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

/// A parameter name as messages may show it (a name could be anything).
fn printable_name(name: &str) -> String {
    let plain =
        !name.is_empty() && name.len() <= 40 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-[]".contains(&b));
    if plain {
        format!("'{name}'")
    } else {
        "with an unusual name".into()
    }
}

/// The URL the driver gets: a `postgres://` URL whose every query parameter
/// is one the driver reads. A keyword/value string (`host=… password=…`)
/// is refused, and so is a parameter the driver does not read whose name
/// says it may hold a secret (`sslpassword`): ignoring it would fail later
/// and less clearly. Other unknown parameters are dropped with a warning
/// naming only the parameter. No message here contains a value.
pub fn for_driver(text: &str) -> anyhow::Result<String> {
    let mut url = match Url::parse(text) {
        Ok(url) => url,
        Err(e) => bail!(
            "DATABASE_URL is not a valid URL ({e}); it is not shown, as it may hold a password. Write it as \
             postgres://user:password@host:port/database, percent-encoding special characters in the password \
             ('?' is %3F, '@' is %40, '/' is %2F); keyword=value strings (host=… user=…) are not supported"
        ),
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!(
            "DATABASE_URL must start with postgres:// or postgresql:// (it starts with {}:)",
            url.scheme()
        );
    }
    let Some(query) = url.query().map(str::to_owned) else {
        return Ok(url.into());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let name = url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .map(|(name, _)| name.into_owned())
            .unwrap_or_default();
        if driver_reads(&name) {
            kept.push(pair);
        } else if secret_like(&name) {
            bail!(
                "DATABASE_URL has the connect parameter {}, which keyledger's PostgreSQL driver does not support; \
                 it may hold a secret, so keyledger stops rather than ignore it. Remove it (a password goes in \
                 the URL's user information or in ?password=)",
                printable_name(&name)
            );
        } else {
            tracing::warn!(
                "ignoring the DATABASE_URL connect parameter {}: keyledger's PostgreSQL driver does not support it",
                printable_name(&name)
            );
        }
    }
    url.set_query(Some(&kept.join("&")).filter(|q| !q.is_empty()).map(String::as_str));
    Ok(url.into())
}

/// The URL for messages: the password in the user information and every
/// query parameter's value but a few harmless ones (`sslmode`, `host`, …)
/// replaced by `***`. Anything that does not parse as a URL prints as a
/// fixed placeholder — a keyword/value string, or a password with an
/// unescaped `?` or `/`, would otherwise print whole.
pub fn redact(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return "<DATABASE_URL, not a URL: not shown>".into();
    };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return "<DATABASE_URL: not shown>".into();
    }
    let query = url.query().map(|query| {
        query
            .split('&')
            .map(|pair| {
                let name = url::form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(name, _)| name.into_owned())
                    .unwrap_or_default();
                match pair.split_once('=') {
                    Some((raw, _)) if !SHOWN_PARAMETERS.contains(&name.as_str()) => format!("{raw}=***"),
                    _ => pair.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    url.set_query(query.as_deref());
    url.into()
}

#[cfg(test)]
mod tests {
    use super::{for_driver, redact};

    #[test]
    fn passwords_never_print() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(
            redact("postgres://u@h/db?password=secret"),
            "postgres://u@h/db?password=***"
        );
        assert_eq!(
            redact("postgres://u:a@b@h/db?sslmode=require&password=secret&PassWord=x&sslpassword=y&pass%77ord=z"),
            "postgres://u:***@h/db?sslmode=require&password=***&PassWord=***&sslpassword=***&pass%77ord=***"
        );
        assert_eq!(
            redact("postgres:///db?host=/run/pg&password=s&application_name=x"),
            "postgres:///db?host=/run/pg&password=***&application_name=***"
        );
        // Not URLs (or not the URL the writer meant): nothing of them prints.
        for text in [
            "postgres://u:pa?ss@h/db",
            "postgres://u:pa/ss@h/db",
            "host=h port=5432 user=u password=pass dbname=db",
            "",
        ] {
            assert!(!redact(text).contains("pa"), "{text} → {}", redact(text));
        }
    }

    #[test]
    fn the_driver_gets_only_parameters_it_reads() {
        assert_eq!(
            for_driver("postgres://u:p%3Fq@h/db?sslmode=require&connect_timeout=10&options[search_path]=x").unwrap(),
            "postgres://u:p%3Fq@h/db?sslmode=require&options[search_path]=x"
        );
        assert_eq!(
            for_driver("postgresql://h/db?target_session_attrs=any").unwrap(),
            "postgresql://h/db"
        );
        for (text, says) in [
            ("postgres://h/db?sslpassword=hunter9", "'sslpassword'"),
            ("postgres://h/db?sslmode=require&my%20token=hunter9", "unusual name"),
            ("postgres://u:hunter?9@h/db", "not a valid URL"),
            ("host=h password=hunter9", "not a valid URL"),
            ("mysql://u:hunter9@h/db", "postgres://"),
        ] {
            let error = format!("{:#}", for_driver(text).unwrap_err());
            assert!(error.contains(says), "{text}: {error}");
            assert!(!error.contains("hunter"), "{text}: {error}");
        }
    }
}
