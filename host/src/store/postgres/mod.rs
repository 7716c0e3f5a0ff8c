//! [`Records`] in PostgreSQL (`[cluster] database_url`), shared by every replica.
//!
//! - Schema migrations are numbered and applied at open, one replica at a time (an advisory
//!   lock), each in its own transaction; a database whose schema is newer than this binary
//!   knows is refused.
//! - Every write is one transaction that first takes `WRITE_LOCK` (`connection.rs`) (a transaction-level
//!   advisory lock), so writes from all replicas are serialized: the change log's revisions
//!   are allocated (`max + 1`) and committed in order, and a watcher that has read revision
//!   `r` never later sees a change numbered below `r` appear. The control plane writes a few
//!   times a second at most; reads take no lock.
//! - A tenant's generation is the revision of its last write, so generations only grow, across
//!   deletion and re-creation too.
//! - Host names are a table whose primary key is the host: two tenants can never hold one,
//!   whichever replicas race to claim it.
//! - Each write notifies [`log::CHANNEL`] with its revision (delivered at commit); followers
//!   listen on a connection of their own ([`Records::listen`]) and poll too, since
//!   notifications are not durable.
//!
//! The client is the synchronous `postgres` crate: like every [`Records`] call, its calls
//! block, and are made from the blocking pool. One connection, reopened after it breaks
//! (`connection.rs`); a statement may run at most 30 s. Connections use TLS as the URL's
//! `sslmode` asks, always verified ([`tls`]).

use std::fmt;
use std::sync::{Mutex, Weak};

use anyhow::{Context, bail};
use postgres::error::SqlState;
use postgres::{Client, Transaction};
use postgres_rustls::MakeTlsConnector;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::Digest;
use super::record_store::{
    ActiveDeployment, Change, Changes, Generation, RecordError, Records, Versioned,
};
use super::records::{CertificateRecord, DeploymentRecord, TenantRecord, check_tenant_name};
use connection::{db_error, snapshot};
use log::{append, change_of, listen};

pub use collect::Collected;

pub mod collect;
mod connection;
mod log;
mod schema;
mod tls;

/// The key of the operator token's sha256 in `corral_settings`.
const OPERATOR_TOKEN: &str = "operator_token_sha256";

/// Records in a PostgreSQL database.
pub struct PgRecords {
    config: postgres::Config,
    /// TLS for every connection, as the URL's `sslmode` asks (see [`tls`]).
    tls: MakeTlsConnector,
    /// The connection; `None` after it broke, until the next call reopens it.
    client: Mutex<Option<Client>>,
}

impl fmt::Debug for PgRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("PgRecords")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(value).context("cannot encode the record")
}

fn from_json<T: DeserializeOwned>(value: serde_json::Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(value).with_context(|| format!("the database's {what} is not valid"))
}

fn generation_of(tx: &mut Transaction<'_>, tenant: &str) -> anyhow::Result<Generation> {
    let row = tx
        .query_opt(
            "SELECT generation FROM corral_tenants WHERE name = $1",
            &[&tenant],
        )
        .map_err(db_error)?;
    Ok(row.map_or(
        Generation::ABSENT,
        |r| Generation(r.get::<_, i64>(0) as u64),
    ))
}

fn check_generation(
    tx: &mut Transaction<'_>,
    tenant: &str,
    expected: Generation,
) -> Result<(), RecordError> {
    let found = generation_of(tx, tenant)?;
    if found != expected {
        return Err(RecordError::Conflict {
            tenant: tenant.to_owned(),
            expected,
            found,
        });
    }
    Ok(())
}

impl Records for PgRecords {
    fn tenant_names(&self) -> anyhow::Result<Vec<String>> {
        self.read(|client| {
            let rows = client
                .query("SELECT name FROM corral_tenants ORDER BY name", &[])
                .map_err(db_error)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn tenant(&self, name: &str) -> anyhow::Result<Option<Versioned<TenantRecord>>> {
        self.read(|client| {
            let row = client
                .query_opt(
                    "SELECT record, generation FROM corral_tenants WHERE name = $1",
                    &[&name],
                )
                .map_err(db_error)?;
            row.map(|row| {
                Ok(Versioned {
                    value: from_json(row.get(0), &format!("record of tenant '{name}'"))?,
                    generation: Generation(row.get::<_, i64>(1) as u64),
                })
            })
            .transpose()
        })
    }

    fn put_tenant(
        &self,
        record: &TenantRecord,
        expected: Generation,
    ) -> Result<Generation, RecordError> {
        check_tenant_name(&record.name).map_err(anyhow::Error::msg)?;
        let json = to_json(record)?;
        self.write(|tx| {
            check_generation(tx, &record.name, expected)?;
            let taken = tx
                .query_opt(
                    "SELECT host, tenant FROM corral_hosts
                     WHERE host = ANY($1) AND tenant <> $2 ORDER BY host LIMIT 1",
                    &[&record.hosts, &record.name],
                )
                .map_err(db_error)?;
            if let Some(row) = taken {
                return Err(RecordError::HostTaken {
                    host: row.get(0),
                    owner: row.get(1),
                });
            }
            let revision = append(tx, &Change::Tenant(record.name.clone()))?;
            tx.execute(
                "INSERT INTO corral_tenants (name, generation, record) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET generation = $2, record = $3",
                &[&record.name, &(revision as i64), &json],
            )
            .map_err(db_error)?;
            tx.execute(
                "DELETE FROM corral_hosts WHERE tenant = $1 AND NOT (host = ANY($2))",
                &[&record.name, &record.hosts],
            )
            .map_err(db_error)?;
            let inserted = tx.execute(
                "INSERT INTO corral_hosts (host, tenant) SELECT unnest($1::text[]), $2
                 ON CONFLICT (host) DO NOTHING",
                &[&record.hosts, &record.name],
            );
            match inserted {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    // The check above holds the write lock, so only a writer that skipped it
                    // could get here; the constraint still decides.
                    Err(RecordError::HostTaken {
                        host: record.hosts.join(", "),
                        owner: "another tenant".into(),
                    })
                }
                Err(e) => Err(db_error(e).into()),
                Ok(_) => Ok(Generation(revision)),
            }
        })
    }

    fn delete_tenant(
        &self,
        name: &str,
        expected: Generation,
    ) -> Result<Vec<DeploymentRecord>, RecordError> {
        self.write(|tx| {
            check_generation(tx, name, expected)?;
            let deployments = tx
                .query(
                    "SELECT record FROM corral_deployments WHERE tenant = $1 ORDER BY version",
                    &[&name],
                )
                .map_err(db_error)?
                .into_iter()
                .map(|row| from_json(row.get(0), &format!("deployment of tenant '{name}'")))
                .collect::<anyhow::Result<Vec<DeploymentRecord>>>()?;
            // Its hosts, deployments and certificate go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM corral_tenants WHERE name = $1", &[&name])
                .map_err(db_error)?;
            append(tx, &Change::Tenant(name.to_owned()))?;
            Ok(deployments)
        })
    }

    fn versions(&self, tenant: &str) -> anyhow::Result<Vec<u32>> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT version FROM corral_deployments WHERE tenant = $1 ORDER BY version",
                    &[&tenant],
                )
                .map_err(db_error)?;
            Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
        })
    }

    fn deployment(&self, tenant: &str, version: u32) -> anyhow::Result<Option<DeploymentRecord>> {
        self.read(|client| {
            let row = client
                .query_opt(
                    "SELECT record FROM corral_deployments WHERE tenant = $1 AND version = $2",
                    &[&tenant, &(version as i32)],
                )
                .map_err(db_error)?;
            row.map(|row| {
                from_json(
                    row.get(0),
                    &format!("deployment {version} of tenant '{tenant}'"),
                )
            })
            .transpose()
        })
    }

    fn add_deployment(
        &self,
        tenant: &str,
        record: DeploymentRecord,
    ) -> anyhow::Result<DeploymentRecord> {
        self.write(|tx| {
            let mut record = record.clone();
            if generation_of(tx, tenant)? == Generation::ABSENT {
                bail!("tenant '{tenant}' does not exist");
            }
            let next: i32 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) + 1 FROM corral_deployments
                     WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db_error)?
                .get(0);
            record.version = next as u32;
            tx.execute(
                "INSERT INTO corral_deployments (tenant, version, record) VALUES ($1, $2, $3)",
                &[&tenant, &next, &to_json(&record)?],
            )
            .map_err(db_error)?;
            append(
                tx,
                &Change::Deployment {
                    tenant: tenant.to_owned(),
                    version: record.version,
                },
            )?;
            Ok(record)
        })
    }

    fn remove_deployment(
        &self,
        tenant: &str,
        version: u32,
    ) -> anyhow::Result<Option<DeploymentRecord>> {
        self.write(|tx| {
            let active: Option<i64> = tx
                .query_opt(
                    "SELECT (record->>'active')::bigint FROM corral_tenants WHERE name = $1",
                    &[&tenant],
                )
                .map_err(db_error)?
                .and_then(|row| row.get(0));
            if active == Some(i64::from(version)) {
                return Err(ActiveDeployment {
                    tenant: tenant.to_owned(),
                    version,
                }
                .into());
            }
            let row = tx
                .query_opt(
                    "DELETE FROM corral_deployments WHERE tenant = $1 AND version = $2
                     RETURNING record",
                    &[&tenant, &(version as i32)],
                )
                .map_err(db_error)?;
            let Some(row) = row else {
                return Ok(None);
            };
            append(
                tx,
                &Change::Deployment {
                    tenant: tenant.to_owned(),
                    version,
                },
            )?;
            from_json(
                row.get(0),
                &format!("deployment {version} of tenant '{tenant}'"),
            )
            .map(Some)
        })
    }

    fn certificate(&self, tenant: &str) -> anyhow::Result<Option<CertificateRecord>> {
        self.read(|client| {
            let row = client
                .query_opt(
                    "SELECT record FROM corral_certificates WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db_error)?;
            row.map(|row| from_json(row.get(0), &format!("certificate of tenant '{tenant}'")))
                .transpose()
        })
    }

    fn put_certificate(&self, tenant: &str, record: &CertificateRecord) -> anyhow::Result<()> {
        let json = to_json(record)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO corral_certificates (tenant, record) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET record = $2",
                &[&tenant, &json],
            )
            .map_err(db_error)?;
            append(tx, &Change::Certificate(tenant.to_owned()))?;
            Ok(())
        })
    }

    fn remove_certificate(&self, tenant: &str) -> anyhow::Result<bool> {
        self.write(|tx| {
            let removed = tx
                .execute(
                    "DELETE FROM corral_certificates WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db_error)?
                > 0;
            if removed {
                append(tx, &Change::Certificate(tenant.to_owned()))?;
            }
            Ok(removed)
        })
    }

    fn revision(&self) -> anyhow::Result<u64> {
        self.read(|client| {
            let revision: i64 = client
                .query_one("SELECT coalesce(max(revision), 0) FROM corral_changes", &[])
                .map_err(db_error)?
                .get(0);
            Ok(revision as u64)
        })
    }

    fn changes_since(&self, revision: u64) -> anyhow::Result<Changes> {
        self.read(|client| {
            // One snapshot for the bounds and the entries.
            let mut tx = snapshot(client)?;
            let bounds = tx
                .query_one(
                    "SELECT coalesce(min(revision), 0), coalesce(max(revision), 0)
                     FROM corral_changes",
                    &[],
                )
                .map_err(db_error)?;
            let (oldest, latest) = (
                bounds.get::<_, i64>(0) as u64,
                bounds.get::<_, i64>(1) as u64,
            );
            // Fallen behind what the log keeps, or ahead of it (a database restored from
            // an older backup): start over from everything.
            if revision > latest || (latest > revision && revision + 1 < oldest) {
                return Ok(Changes::Reload { revision: latest });
            }
            let rows = tx
                .query(
                    "SELECT kind, tenant, version FROM corral_changes
                     WHERE revision > $1 ORDER BY revision",
                    &[&(revision as i64)],
                )
                .map_err(db_error)?;
            let changes = rows
                .into_iter()
                .map(|row| change_of(row.get(0), row.get(1), row.get(2)))
                .collect::<anyhow::Result<_>>()?;
            tx.commit().map_err(db_error)?;
            Ok(Changes::Since {
                changes,
                revision: latest,
            })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn agree_operator_token(&self, hash: &Digest) -> anyhow::Result<()> {
        let recorded: String = self.write(|tx| {
            tx.execute(
                "INSERT INTO corral_settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO NOTHING",
                &[&OPERATOR_TOKEN, &hash.hex()],
            )
            .map_err(db_error)?;
            anyhow::Ok(
                tx.query_one(
                    "SELECT value FROM corral_settings WHERE key = $1",
                    &[&OPERATOR_TOKEN],
                )
                .map_err(db_error)?
                .get(0),
            )
        })?;
        if recorded != hash.hex() {
            bail!(
                "this server's operator token is not the one the other servers sharing the \
                 database use (the database keeps its sha256 under corral_settings key \
                 '{OPERATOR_TOKEN}'): give every server the same token. To change it, give every \
                 server the new one and delete that row before the first restarts"
            );
        }
        Ok(())
    }

    fn listen(&self, wake: Weak<Notify>) -> bool {
        match listen(self.config.clone(), self.tls.clone(), wake) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start listening for other servers' changes; polling only");
                false
            }
        }
    }
}
