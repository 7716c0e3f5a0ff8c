//! The change log in the database: every write appends one numbered entry and notifies
//! [`CHANNEL`]; [`listen`] hears those notifications for a follower.

use std::sync::Weak;
use std::time::Duration;

use anyhow::bail;
use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;
use postgres_rustls::MakeTlsConnector;
use tokio::sync::Notify;

use super::db_error;
use crate::store::record_store::{Change, LOG_LEN};

/// The channel each write notifies with its revision.
pub(super) const CHANNEL: &str = "corral_changes";

/// Appends `change` to the log (holding the write lock), notifies listeners at commit and
/// drops entries older than [`LOG_LEN`]. Returns its revision.
pub(super) fn append(tx: &mut Transaction<'_>, change: &Change) -> anyhow::Result<u64> {
    let (kind, tenant, version) = match change {
        Change::Tenant(tenant) => ("tenant", tenant, None),
        Change::Deployment { tenant, version } => ("deployment", tenant, Some(*version as i32)),
        Change::Certificate(tenant) => ("certificate", tenant, None),
    };
    let revision: i64 = tx
        .query_one(
            "INSERT INTO corral_changes (revision, kind, tenant, version)
             SELECT coalesce(max(revision), 0) + 1, $1, $2, $3 FROM corral_changes
             RETURNING revision",
            &[&kind, tenant, &version],
        )
        .map_err(db_error)?
        .get(0);
    tx.execute(
        "DELETE FROM corral_changes WHERE revision <= $1",
        &[&(revision - LOG_LEN as i64)],
    )
    .map_err(db_error)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &revision.to_string()],
    )
    .map_err(db_error)?;
    Ok(revision as u64)
}

pub(super) fn change_of(
    kind: &str,
    tenant: String,
    version: Option<i32>,
) -> anyhow::Result<Change> {
    Ok(match (kind, version) {
        ("tenant", _) => Change::Tenant(tenant),
        ("certificate", _) => Change::Certificate(tenant),
        ("deployment", Some(version)) => Change::Deployment {
            tenant,
            version: version as u32,
        },
        _ => bail!("the database's change log has an entry of unknown kind '{kind}'"),
    })
}

/// How long a listener waits for a notification before checking it is still wanted.
const LISTEN_CHECK: Duration = Duration::from_secs(1);
/// How long a listener waits before connecting again after its connection broke.
const LISTEN_RETRY: Duration = Duration::from_secs(2);

/// Wakes `wake` at each notification on [`CHANNEL`], on a connection of its own in a thread of
/// its own, until `wake` is dropped. Each time it (re)connects it wakes `wake` once too, for
/// what was written while it was not listening. Notifications are not durable and a broken
/// connection loses some: followers poll as well.
pub(super) fn listen(
    mut config: postgres::Config,
    tls: MakeTlsConnector,
    wake: Weak<Notify>,
) -> anyhow::Result<()> {
    config.application_name("corral-listen");
    std::thread::Builder::new()
        .name("corral-listen".into())
        .spawn(move || {
            let mut warned = false;
            while wake.strong_count() > 0 {
                match hear(&config, &tls, &wake) {
                    Ok(()) => return,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %format!("{e:#}"), "not listening for other servers' changes; polling meanwhile");
                            warned = true;
                        }
                        std::thread::sleep(LISTEN_RETRY);
                    }
                }
            }
        })?;
    Ok(())
}

/// One connection's worth of [`listen`]: returns when `wake` is gone, fails when the
/// connection does.
fn hear(
    config: &postgres::Config,
    tls: &MakeTlsConnector,
    wake: &Weak<Notify>,
) -> anyhow::Result<()> {
    let mut client = config.connect(tls.clone()).map_err(db_error)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(db_error)?;
    tracing::debug!("listening for other servers' changes");
    let Some(notify) = wake.upgrade() else {
        return Ok(());
    };
    notify.notify_one();
    drop(notify);
    loop {
        let heard = client.notifications().timeout_iter(LISTEN_CHECK).next();
        let Some(notify) = wake.upgrade() else {
            return Ok(());
        };
        match heard {
            Ok(Some(_)) => notify.notify_one(),
            Err(e) => return Err(db_error(e)),
            Ok(None) if client.is_closed() => bail!("the database closed the connection"),
            Ok(None) => {}
        }
    }
}
