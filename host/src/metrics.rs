//! Counters the admin listener exposes in the Prometheus text format.
//!
//! Labels are bounded by what the operator creates (tenants) and HTTP status codes, never by
//! anything a client sends: requests to unknown hosts count under `tenant=""`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Tenant → status → requests.
    requests: DashMap<String, DashMap<u16, AtomicU64>>,
    /// Tenant → guest stdout/stderr bytes dropped over the tenant's log budget.
    log_dropped: DashMap<String, Arc<AtomicU64>>,
}

impl Metrics {
    pub fn record_request(&self, tenant: &str, status: u16) {
        if let Some(by_status) = self.requests.get(tenant) {
            if let Some(count) = by_status.get(&status) {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            by_status
                .entry(status)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests
            .entry(tenant.to_owned())
            .or_default()
            .entry(status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of a tenant's dropped guest-output bytes.
    pub fn log_dropped_counter(&self, tenant: &str) -> Arc<AtomicU64> {
        Arc::clone(&self.log_dropped.entry(tenant.to_owned()).or_default())
    }

    /// The Prometheus text exposition, with gauges read at call time.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP corral_requests_total Data-plane requests answered, by tenant and HTTP status.\n");
        out.push_str("# TYPE corral_requests_total counter\n");
        let mut rows: Vec<(String, u16, u64)> = Vec::new();
        for tenant in &self.requests {
            for status in tenant.value() {
                rows.push((
                    tenant.key().clone(),
                    *status.key(),
                    status.value().load(Ordering::Relaxed),
                ));
            }
        }
        rows.sort_unstable();
        for (tenant, status, count) in rows {
            let _ = writeln!(
                out,
                "corral_requests_total{{tenant=\"{}\",status=\"{status}\"}} {count}",
                escape(&tenant)
            );
        }
        out.push_str("# HELP corral_guest_log_dropped_bytes_total Guest stdout/stderr bytes dropped over the tenant's log budget.\n");
        out.push_str("# TYPE corral_guest_log_dropped_bytes_total counter\n");
        let mut dropped: Vec<(String, u64)> = self
            .log_dropped
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        dropped.sort_unstable();
        for (tenant, bytes) in dropped {
            let _ = writeln!(
                out,
                "corral_guest_log_dropped_bytes_total{{tenant=\"{}\"}} {bytes}",
                escape(&tenant)
            );
        }
        let _ = write!(
            out,
            "# HELP corral_model_sessions Live inference sessions (one per distinct model in use).\n\
             # TYPE corral_model_sessions gauge\n\
             corral_model_sessions {}\n\
             # HELP corral_tenants Tenants registered.\n\
             # TYPE corral_tenants gauge\n\
             corral_tenants {}\n",
            gauges.model_sessions, gauges.tenants
        );
        out
    }
}

/// Values read from the live system when metrics are scraped.
#[derive(Debug)]
pub struct Gauges {
    pub model_sessions: usize,
    pub tenants: usize,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_tenant_and_status() {
        let metrics = Metrics::default();
        metrics.record_request("acme", 200);
        metrics.record_request("acme", 200);
        metrics.record_request("acme", 500);
        metrics.record_request("", 404);
        let text = metrics.render(&Gauges {
            model_sessions: 3,
            tenants: 1,
        });
        assert!(
            text.contains("corral_requests_total{tenant=\"acme\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("corral_requests_total{tenant=\"acme\",status=\"500\"} 1\n"));
        assert!(text.contains("corral_requests_total{tenant=\"\",status=\"404\"} 1\n"));
        assert!(text.contains("corral_model_sessions 3\n"));
    }
}
