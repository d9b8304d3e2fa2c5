//! Session-level PostgreSQL advisory locks held on a pooled connection of
//! their own, for work that must run on one worker at a time but keeps no
//! transaction open meanwhile (log readers wait for every open transaction).
//! The lock must never go back to the pool with its connection: if unlocking
//! fails, or the holder is dropped without releasing (a panic, a cancelled
//! task), the connection is closed instead, which ends the session and with
//! it the lock.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// Lock keys in use, one per kind of exclusive work (`relay.rs` has its own).
pub mod keys {
    /// A running replay: two at once would share the rebuild schema.
    pub const REPLAY: i64 = 0x6b65_796c_6564_6702;
    /// The scheduled jobs: this plus the job's number.
    pub const JOBS: i64 = 0x6b65_796c_6564_6800;
}

pub struct SessionLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
}

impl SessionLock {
    /// Waits until the lock is free, then holds it.
    pub async fn acquire(pool: &PgPool, key: i64) -> Result<SessionLock, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(SessionLock { conn: Some(conn), key })
    }

    /// Holds the lock if nobody else does; `None` if somebody does.
    pub async fn try_acquire(pool: &PgPool, key: i64) -> Result<Option<SessionLock>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then_some(SessionLock { conn: Some(conn), key }))
    }

    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let unlocked = sqlx::query("select pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            drop(conn.detach());
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
