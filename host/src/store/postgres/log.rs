//! The change log in the database: every write appends one numbered entry.

use anyhow::bail;
use postgres::Transaction;

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
