//! [`PgRecords`]' connection: opened at first use, reopened after it breaks, and the one way
//! reads, write transactions and snapshots run on it.

use std::cell::Cell;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use postgres::{Client, Transaction};

use super::schema::migrate;
use super::{PgRecords, tls};

/// The advisory lock every write transaction takes first (an arbitrary constant: "corral-w").
const WRITE_LOCK: i64 = 0x636f_7272_616c_2d77;
/// Longest a statement may run before the server cancels it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgRecords {
    /// Connects to the database at `url` (`postgres://user:password@host:port/dbname`, or
    /// libpq's `key=value` form; `sslmode` as [`tls`] says, verified against `ca_file` or the
    /// system's certificates) and brings its schema up to date. Blocking.
    pub fn open(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("[cluster] database_url is not a valid URL: {e}"))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("corral")
            .options(&format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        let records = Self {
            config,
            tls: tls::connector(ca_file)?,
            client: Mutex::new(None),
        };
        records.read(migrate)?;
        Ok(records)
    }

    pub(super) fn connect(&self) -> anyhow::Result<Client> {
        self.config.connect(self.tls.clone()).with_context(|| {
            format!(
                "cannot connect to the database ({:?}, database {:?})",
                self.config.get_hosts(),
                self.config.get_dbname().unwrap_or("default")
            )
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the connection, opening it first if needed. A connection found broken
    /// (the database restarted, or cut it) is replaced and `f` runs once more on the new one,
    /// unless `committed` says the failure came while committing: then whether the write took
    /// effect is unknown, and the caller is told.
    fn with_client<T, E>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, E>,
        committed: &Cell<bool>,
    ) -> Result<T, E>
    where
        E: From<anyhow::Error>,
    {
        let mut slot = self.lock();
        let mut retried = false;
        loop {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(self.connect()?);
            }
            let client = slot.as_mut().expect("connected above");
            let result = f(client);
            // A call cut by the server fails before the client has noticed the connection is
            // gone: after a failure, ask the connection itself.
            let broken = client.is_closed()
                || (result.is_err() && client.is_valid(CONNECT_TIMEOUT).is_err());
            if !broken {
                return result;
            }
            *slot = None;
            if result.is_ok() || retried || committed.get() {
                return result;
            }
            retried = true;
        }
    }

    /// [`PgRecords::with_client`] for a read.
    pub(super) fn read<T>(
        &self,
        f: impl FnMut(&mut Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.with_client(f, &Cell::new(false))
    }

    /// Runs `f` in a write transaction holding [`WRITE_LOCK`], then commits.
    pub(super) fn write<T, E>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<anyhow::Error>,
    {
        let committing = Cell::new(false);
        self.with_client(
            |client| {
                let mut tx = client.transaction().map_err(db_error)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .map_err(db_error)?;
                let value = f(&mut tx)?;
                committing.set(true);
                tx.commit().map_err(db_error)?;
                Ok(value)
            },
            &committing,
        )
    }
}

pub(super) fn db_error(error: postgres::Error) -> anyhow::Error {
    anyhow::Error::new(error).context("database error")
}

/// A read-only transaction that sees one snapshot of the database for all its statements.
pub(super) fn snapshot(client: &mut Client) -> anyhow::Result<Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db_error)
}
