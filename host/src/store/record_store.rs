//! Where tenants and their deployments are recorded: the [`Records`] seam and today's
//! implementation, JSON files in the data directory ([`DirRecords`]).
//!
//! The seam carries what a shared store needs for several servers to agree:
//! - a tenant's record changes only by compare-and-swap on its [`Generation`], so two writers
//!   never overwrite each other unseen;
//! - deployment versions are allocated by the store;
//! - every change is numbered in a change log that a watcher follows with
//!   [`Records::changes_since`] (and reloads everything from when it has fallen too far
//!   behind).
//!
//! [`DirRecords`]' layout, unchanged since the first release:
//! - `tenants/<tenant>/tenant.json`: a [`TenantRecord`] (hosts, token hash, active version);
//! - `tenants/<tenant>/deployments/<version>.json`: a [`DeploymentRecord`] pinned by digests;
//! - `tenants/<tenant>/certificate.json`: the tenant's TLS certificate and key, if uploaded.
//!
//! A deployment record is written before the tenant record that activates it, so a crash in
//! between leaves an inactive version, never an active one whose record is missing. A tenant's
//! record goes before its directory, so a crash in between leaves a directory without a
//! record, which [`DirRecords::open`] removes. Its generations and change log live in memory:
//! one process holds the directory at a time.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::Digest;
use super::dir::DataDir;
use super::records::{CertificateRecord, DeploymentRecord, TenantRecord, check_tenant_name};

/// When a tenant's record was last written, as the store counts: it only grows, across a
/// tenant's deletion and re-creation too, so a stale reader never matches. 0 for a tenant that
/// does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation of a tenant that does not exist (yet, or any more).
    pub const ABSENT: Self = Self(0);
}

/// A record and the generation it was read at.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    pub generation: Generation,
}

/// One numbered change, for a watcher to re-read what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The tenant's record was written or removed (with its deployments and certificate).
    Tenant(String),
    /// A deployment was added or removed.
    Deployment { tenant: String, version: u32 },
    /// The tenant's certificate was written or removed.
    Certificate(String),
}

/// What [`Records::changes_since`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// The changes after the revision asked for, oldest first, and the revision they reach.
    Since { changes: Vec<Change>, revision: u64 },
    /// The log no longer reaches back that far: reload everything, then follow from
    /// `revision`.
    Reload { revision: u64 },
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Another tenant holds one of the record's host names.
    #[error("the host name '{host}' belongs to tenant '{owner}'")]
    HostTaken { host: String, owner: String },
    /// Someone else changed the tenant since it was read at `expected`.
    #[error(
        "tenant '{tenant}' was changed meanwhile (generation {found:?}, expected {expected:?})"
    )]
    Conflict {
        tenant: String,
        expected: Generation,
        found: Generation,
    },
    /// The store failed (I/O, an unreadable record).
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// [`Records::remove_deployment`] of the version the tenant runs: the store refuses it, so
/// that a server whose view is behind another's activation cannot remove what it activated.
#[derive(Debug, thiserror::Error)]
#[error("version {version} is the active deployment of '{tenant}'; activate another first")]
pub struct ActiveDeployment {
    pub tenant: String,
    pub version: u32,
}

/// Where tenants and their deployments are recorded. Every call may block on I/O.
pub trait Records: Send + Sync + fmt::Debug {
    /// Every tenant's name, sorted.
    fn tenant_names(&self) -> anyhow::Result<Vec<String>>;
    /// A tenant's record and its generation; `None` if there is none.
    fn tenant(&self, name: &str) -> anyhow::Result<Option<Versioned<TenantRecord>>>;
    /// Writes a tenant's record if its generation is still `expected` ([`Generation::ABSENT`]
    /// to create it); the new generation. A host name another tenant holds is refused
    /// ([`RecordError::HostTaken`]), whichever server wrote that tenant.
    fn put_tenant(
        &self,
        record: &TenantRecord,
        expected: Generation,
    ) -> Result<Generation, RecordError>;
    /// Removes a tenant, its deployments and its certificate if its generation is still
    /// `expected`. The deployments it had are returned, so their blobs can be released.
    fn delete_tenant(
        &self,
        name: &str,
        expected: Generation,
    ) -> Result<Vec<DeploymentRecord>, RecordError>;
    /// The versions stored for a tenant, ascending.
    fn versions(&self, tenant: &str) -> anyhow::Result<Vec<u32>>;
    /// One deployment; `None` if it is not stored.
    fn deployment(&self, tenant: &str, version: u32) -> anyhow::Result<Option<DeploymentRecord>>;
    /// Stores `record` under the next version of the tenant (one past the highest stored),
    /// returning it with that version.
    fn add_deployment(
        &self,
        tenant: &str,
        record: DeploymentRecord,
    ) -> anyhow::Result<DeploymentRecord>;
    /// Removes a deployment, returning it; `None` if it was not stored. The tenant's active
    /// version is refused ([`ActiveDeployment`]), whichever server activated it.
    fn remove_deployment(
        &self,
        tenant: &str,
        version: u32,
    ) -> anyhow::Result<Option<DeploymentRecord>>;
    /// The tenant's certificate; `None` if it has none.
    fn certificate(&self, tenant: &str) -> anyhow::Result<Option<CertificateRecord>>;
    /// Writes the tenant's certificate.
    fn put_certificate(&self, tenant: &str, record: &CertificateRecord) -> anyhow::Result<()>;
    /// Removes the tenant's certificate; whether it had one.
    fn remove_certificate(&self, tenant: &str) -> anyhow::Result<bool>;
    /// The revision of the latest change: read it before loading everything, then follow
    /// [`Records::changes_since`] it.
    fn revision(&self) -> anyhow::Result<u64>;
    /// The changes after `revision`.
    fn changes_since(&self, revision: u64) -> anyhow::Result<Changes>;
    /// Whether other servers write these records too (then what this server holds may be
    /// behind them).
    fn shared(&self) -> bool {
        false
    }
    /// Starts telling `wake` of every change other servers make, as soon as the store learns
    /// of it (until `wake` is dropped); whether the store can. One that cannot (a data
    /// directory, which only this server writes) leaves its followers to poll.
    fn listen(&self, wake: Weak<Notify>) -> bool {
        let _ = wake;
        false
    }
    /// Checks that this server was given the operator token every server sharing the store
    /// uses (`hash` is its sha256): the first server to start records it, and a server given
    /// another one is refused, saying so. A store only this server uses has nothing to check.
    fn agree_operator_token(&self, hash: &Digest) -> anyhow::Result<()> {
        let _ = hash;
        Ok(())
    }
}

/// Every deployment of a tenant, by version (a store's whole view of one tenant).
pub fn stored_deployments(
    records: &dyn Records,
    tenant: &str,
) -> anyhow::Result<Vec<DeploymentRecord>> {
    let mut all = Vec::new();
    for version in records.versions(tenant)? {
        if let Some(record) = records.deployment(tenant, version)? {
            all.push(record);
        }
    }
    Ok(all)
}

/// Changes a store keeps for watchers; one further behind reloads.
pub(super) const LOG_LEN: usize = 4096;

/// Records as JSON files in the data directory (the layout in this module's documentation).
#[derive(Debug)]
pub struct DirRecords {
    dir: Arc<DataDir>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tenants written since open; one on disk and not here is at generation 1 (the
    /// revision at open).
    generations: HashMap<String, Generation>,
    /// The last [`LOG_LEN`] changes and their revisions.
    log: VecDeque<(u64, Change)>,
    revision: u64,
    /// Every tenant's host names: host → tenant.
    hosts: HashMap<String, String>,
}

impl DirRecords {
    /// The records of `dir`, removing tenant directories whose creation or deletion a crash
    /// interrupted (no `tenant.json`: nothing refers to them).
    pub fn open(dir: Arc<DataDir>) -> anyhow::Result<Self> {
        for name in dir.list("tenants".as_ref())? {
            if check_tenant_name(&name).is_err() {
                tracing::warn!(entry = %name.escape_debug(), "ignoring an entry of tenants/ that is not a tenant name");
                continue;
            }
            if !dir.path(&tenant_path(&name))?.exists() {
                tracing::info!(tenant = %name, "removing an incomplete tenant directory");
                dir.remove_dir(&tenant_dir(&name))?;
            }
        }
        let records = Self {
            dir,
            state: Mutex::new(State {
                generations: HashMap::new(),
                log: VecDeque::new(),
                revision: 1,
                hosts: HashMap::new(),
            }),
        };
        let mut hosts = HashMap::new();
        for name in records.tenant_names()? {
            // An unreadable record is reported by the restore that reads it next.
            if let Ok(Some(record)) = records.read::<TenantRecord>(&tenant_path(&name)) {
                hosts.extend(record.hosts.into_iter().map(|h| (h, name.clone())));
            }
        }
        records.state().hosts = hosts;
        Ok(records)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read<T: DeserializeOwned>(&self, relative: &Path) -> anyhow::Result<Option<T>> {
        let Some(bytes) = self.dir.read_file(relative)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not a valid record",
                self.dir.root().join(relative).display()
            )
        })
    }

    fn write<T: Serialize>(&self, relative: &Path, value: &T) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(value).context("cannot encode the record")?;
        self.dir.write_file(relative, &json)
    }

    /// The tenant's generation as `state` knows it, checking the disk for one it does not.
    fn generation(&self, state: &State, tenant: &str) -> anyhow::Result<Generation> {
        if let Some(generation) = state.generations.get(tenant) {
            return Ok(*generation);
        }
        Ok(if self.dir.path(&tenant_path(tenant))?.exists() {
            Generation(1)
        } else {
            Generation::ABSENT
        })
    }

    fn check(&self, state: &State, tenant: &str, expected: Generation) -> Result<(), RecordError> {
        let found = self.generation(state, tenant)?;
        if found != expected {
            return Err(RecordError::Conflict {
                tenant: tenant.to_owned(),
                expected,
                found,
            });
        }
        Ok(())
    }
}

impl State {
    fn record(&mut self, change: Change) {
        self.revision += 1;
        self.log.push_back((self.revision, change));
        if self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
    }
}

impl Records for DirRecords {
    fn tenant_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for name in self.dir.list("tenants".as_ref())? {
            if check_tenant_name(&name).is_ok() && self.dir.path(&tenant_path(&name))?.exists() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn tenant(&self, name: &str) -> anyhow::Result<Option<Versioned<TenantRecord>>> {
        let state = self.state();
        let Some(value) = self.read::<TenantRecord>(&tenant_path(name))? else {
            return Ok(None);
        };
        let generation = self.generation(&state, name)?;
        Ok(Some(Versioned { value, generation }))
    }

    fn put_tenant(
        &self,
        record: &TenantRecord,
        expected: Generation,
    ) -> Result<Generation, RecordError> {
        check_tenant_name(&record.name).map_err(anyhow::Error::msg)?;
        let mut state = self.state();
        self.check(&state, &record.name, expected)?;
        for host in &record.hosts {
            if let Some(owner) = state.hosts.get(host).filter(|o| **o != record.name) {
                return Err(RecordError::HostTaken {
                    host: host.clone(),
                    owner: owner.clone(),
                });
            }
        }
        self.write(&tenant_path(&record.name), record)?;
        state.hosts.retain(|_, owner| *owner != record.name);
        state.hosts.extend(
            record
                .hosts
                .iter()
                .map(|h| (h.clone(), record.name.clone())),
        );
        state.record(Change::Tenant(record.name.clone()));
        let next = Generation(state.revision);
        state.generations.insert(record.name.clone(), next);
        Ok(next)
    }

    fn delete_tenant(
        &self,
        name: &str,
        expected: Generation,
    ) -> Result<Vec<DeploymentRecord>, RecordError> {
        let mut state = self.state();
        self.check(&state, name, expected)?;
        let deployments = stored_deployments(self, name)?;
        // The record first: a crash after it leaves a directory that `open` removes.
        self.dir.remove_file(&tenant_path(name))?;
        self.dir.remove_dir(&tenant_dir(name))?;
        state.hosts.retain(|_, owner| owner != name);
        state
            .generations
            .insert(name.to_owned(), Generation::ABSENT);
        state.record(Change::Tenant(name.to_owned()));
        Ok(deployments)
    }

    fn versions(&self, tenant: &str) -> anyhow::Result<Vec<u32>> {
        let mut versions: Vec<u32> = self
            .dir
            .list(&deployments_dir(tenant))?
            .iter()
            .filter_map(|file| file.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn deployment(&self, tenant: &str, version: u32) -> anyhow::Result<Option<DeploymentRecord>> {
        self.read(&deployment_path(tenant, version))
    }

    fn add_deployment(
        &self,
        tenant: &str,
        mut record: DeploymentRecord,
    ) -> anyhow::Result<DeploymentRecord> {
        let mut state = self.state();
        record.version = self.versions(tenant)?.last().map_or(1, |v| v + 1);
        self.write(&deployment_path(tenant, record.version), &record)?;
        state.record(Change::Deployment {
            tenant: tenant.to_owned(),
            version: record.version,
        });
        Ok(record)
    }

    fn remove_deployment(
        &self,
        tenant: &str,
        version: u32,
    ) -> anyhow::Result<Option<DeploymentRecord>> {
        let mut state = self.state();
        let path = deployment_path(tenant, version);
        let Some(record) = self.read::<DeploymentRecord>(&path)? else {
            return Ok(None);
        };
        let active = self
            .read::<TenantRecord>(&tenant_path(tenant))?
            .and_then(|t| t.active);
        if active == Some(version) {
            return Err(ActiveDeployment {
                tenant: tenant.to_owned(),
                version,
            }
            .into());
        }
        self.dir.remove_file(&path)?;
        state.record(Change::Deployment {
            tenant: tenant.to_owned(),
            version,
        });
        Ok(Some(record))
    }

    fn certificate(&self, tenant: &str) -> anyhow::Result<Option<CertificateRecord>> {
        self.read(&certificate_path(tenant))
    }

    fn put_certificate(&self, tenant: &str, record: &CertificateRecord) -> anyhow::Result<()> {
        let mut state = self.state();
        self.write(&certificate_path(tenant), record)?;
        state.record(Change::Certificate(tenant.to_owned()));
        Ok(())
    }

    fn remove_certificate(&self, tenant: &str) -> anyhow::Result<bool> {
        let mut state = self.state();
        let removed = self.dir.remove_file(&certificate_path(tenant))?;
        if removed {
            state.record(Change::Certificate(tenant.to_owned()));
        }
        Ok(removed)
    }

    fn revision(&self) -> anyhow::Result<u64> {
        Ok(self.state().revision)
    }

    fn changes_since(&self, revision: u64) -> anyhow::Result<Changes> {
        let state = self.state();
        let oldest = state.log.front().map_or(state.revision + 1, |(r, _)| *r);
        if revision > state.revision || revision + 1 < oldest {
            return Ok(Changes::Reload {
                revision: state.revision,
            });
        }
        Ok(Changes::Since {
            changes: state
                .log
                .iter()
                .filter(|(r, _)| *r > revision)
                .map(|(_, change)| change.clone())
                .collect(),
            revision: state.revision,
        })
    }
}

fn tenant_dir(tenant: &str) -> PathBuf {
    PathBuf::from("tenants").join(tenant)
}

fn tenant_path(tenant: &str) -> PathBuf {
    tenant_dir(tenant).join("tenant.json")
}

fn certificate_path(tenant: &str) -> PathBuf {
    tenant_dir(tenant).join("certificate.json")
}

fn deployments_dir(tenant: &str) -> PathBuf {
    tenant_dir(tenant).join("deployments")
}

fn deployment_path(tenant: &str, version: u32) -> PathBuf {
    deployments_dir(tenant).join(format!("{version}.json"))
}
