//! The schema of [`PgRecords`](super::PgRecords)' database and its migrations.

use anyhow::{Context, bail};
use postgres::Client;

/// The advisory lock migrations are applied under ("corral-m").
const MIGRATION_LOCK: i64 = 0x636f_7272_616c_2d6d;

/// The schema, one migration per entry, applied in order and never edited once released
/// (a change is a new entry).
const MIGRATIONS: &[&str] = &[
    // 1: tenants, their host names, deployments and certificates, and the change log.
    "CREATE TABLE corral_tenants (
         name text PRIMARY KEY,
         generation bigint NOT NULL,
         record jsonb NOT NULL
     );
     CREATE TABLE corral_hosts (
         host text PRIMARY KEY,
         tenant text NOT NULL REFERENCES corral_tenants (name) ON DELETE CASCADE
     );
     CREATE INDEX corral_hosts_tenant ON corral_hosts (tenant);
     CREATE TABLE corral_deployments (
         tenant text NOT NULL REFERENCES corral_tenants (name) ON DELETE CASCADE,
         version integer NOT NULL,
         record jsonb NOT NULL,
         PRIMARY KEY (tenant, version)
     );
     CREATE TABLE corral_certificates (
         tenant text PRIMARY KEY REFERENCES corral_tenants (name) ON DELETE CASCADE,
         record jsonb NOT NULL
     );
     CREATE TABLE corral_changes (
         revision bigint PRIMARY KEY,
         kind text NOT NULL,
         tenant text NOT NULL,
         version integer,
         at timestamptz NOT NULL DEFAULT now()
     );",
    // 2: settings every server must agree on (the operator token's hash), and the blobs
    // uploads are putting in the shared bucket (kept from collection for a grace period).
    "CREATE TABLE corral_settings (
         key text PRIMARY KEY,
         value text NOT NULL
     );
     CREATE TABLE corral_blob_uploads (
         digest text PRIMARY KEY,
         at timestamptz NOT NULL DEFAULT now()
     );",
];

/// Applies the migrations the database lacks, under [`MIGRATION_LOCK`].
pub(super) fn migrate(client: &mut Client) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .context("cannot take the migration lock")?;
    let result = apply_migrations(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked.context("cannot release the migration lock")?;
    Ok(())
}

fn apply_migrations(client: &mut Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS corral_schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .context("cannot create the migrations table")?;
    let applied: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM corral_schema_migrations",
            &[],
        )
        .context("cannot read the schema version")?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if applied > known {
        bail!(
            "the database's schema is at version {applied}, newer than this Corral knows \
             ({known}): run a Corral at least as new as the one that migrated it"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = index as i32 + 1;
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)
            .with_context(|| format!("schema migration {version} failed"))?;
        tx.execute(
            "INSERT INTO corral_schema_migrations (version) VALUES ($1)",
            &[&version],
        )?;
        tx.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}
