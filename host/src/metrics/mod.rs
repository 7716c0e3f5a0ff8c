//! What the admin listener's `/metrics` exposes, in the Prometheus text format.
//!
//! Labels are bounded by what the operator creates (tenants), the models deployed (digests),
//! HTTP status codes and a fixed set of error codes, never by anything a client sends:
//! requests to unknown hosts count under `tenant=""`. `docs/metrics.md` lists every metric.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

mod histogram;

pub use histogram::{CountHistogram, Histogram};

/// One tenant's counters, shared with the parts of the server that count them.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Epoch ticks (10 ms each) in which the tenant's guest code was running.
    pub cpu_ticks: AtomicU64,
    /// Guest stdout/stderr bytes dropped over the tenant's log budget.
    pub log_dropped: AtomicU64,
    /// Requests turned away because the tenant's slots and queue were full.
    pub rejected: AtomicU64,
    /// Time to the response head.
    pub latency: Histogram,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Tenant → status → requests.
    requests: DashMap<String, DashMap<u16, AtomicU64>>,
    tenants: DashMap<String, Arc<TenantCounters>>,
    /// (tenant, result) → deployment uploads; result is `ok` or the error code.
    deployments: DashMap<(String, &'static str), AtomicU64>,
}

/// Values read from the live system when metrics are scraped.
/// A loaded model's series, as whoever measures them (the scheduler) keeps them.
pub trait ModelSeries: Send + Sync + std::fmt::Debug {
    /// Rows in each run.
    fn batch_size(&self) -> &CountHistogram;
    /// Time jobs waited in the model's queue.
    fn queue(&self) -> &Histogram;
    /// Time of each run.
    fn compute(&self) -> &Histogram;
}

#[derive(Debug, Default)]
pub struct Gauges {
    /// Loaded models: (digest, device, measured resident bytes).
    pub models_resident: Vec<(String, String, u64)>,
    /// Each device's models' memory budget.
    pub models_budget: Vec<(String, u64)>,
    pub model_loads: u64,
    pub model_evictions: u64,
    /// Time of each model load, by device.
    pub model_load_times: Vec<(String, Arc<Histogram>)>,
    /// Per loaded model (digest): its scheduler measurements.
    pub model_stats: Vec<(String, Arc<dyn ModelSeries>)>,
    /// Tenant → seconds of inference runs (its share of each batch), with the device.
    pub tenant_compute: Vec<(String, String, f64)>,
    /// Tenant → inference jobs waiting for a run thread.
    pub nn_queued: Vec<(String, u32)>,
    pub tenants: usize,
    /// Tenant → requests waiting for a slot.
    pub queue_depth: Vec<(String, u32)>,
    pub instances_in_use: usize,
    pub instance_slots: u32,
    /// Inference runs executing now (stopped runs count until they have really ended).
    pub inference_runs: usize,
    /// Data-plane listener (`http`, `https`) → its connection counts.
    pub connections: Vec<(&'static str, Arc<ConnectionStats>)>,
}

impl Metrics {
    pub fn record_request(&self, tenant: &str, status: u16, elapsed: Duration) {
        self.tenant(tenant).latency.observe(elapsed);
        if let Some(by_status) = self.requests.get(tenant) {
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

    /// The counters of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantCounters> {
        if let Some(counters) = self.tenants.get(tenant) {
            return Arc::clone(&counters);
        }
        Arc::clone(&self.tenants.entry(tenant.to_owned()).or_default())
    }

    /// Forgets a deleted tenant's series (a tenant created again under its name starts from
    /// zero, which Prometheus reads as a counter reset).
    pub fn forget_tenant(&self, tenant: &str) {
        self.requests.remove(tenant);
        self.tenants.remove(tenant);
        self.deployments.retain(|(name, _), _| name != tenant);
    }

    /// Counts one deployment upload: `result` is `ok` or the error code it was refused with.
    pub fn record_deployment(&self, tenant: &str, result: &'static str) {
        self.deployments
            .entry((tenant.to_owned(), result))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The inference layer's series: per loaded model, per tenant, and the cache's counters.
    fn render_inference(&self, out: &mut String, gauges: &Gauges) {
        type Render = fn(&dyn ModelSeries, &mut String, &str, &str);
        let per_model: [(&str, &str, Render); 3] = [
            (
                "corral_nn_batch_size",
                "Rows in each inference run (a batch of requests stacked on the batch axis), by model digest.",
                |s, out, name, labels| s.batch_size().render(out, name, labels),
            ),
            (
                "corral_nn_queue_seconds",
                "Time wasi:nn compute jobs waited in their model's queue, by model digest.",
                |s, out, name, labels| s.queue().render(out, name, labels),
            ),
            (
                "corral_nn_compute_seconds",
                "Time of each inference run (batch) on the backend, by model digest.",
                |s, out, name, labels| s.compute().render(out, name, labels),
            ),
        ];
        for (name, help, render) in per_model {
            header(out, name, "histogram", help);
            for (model, stats) in &gauges.model_stats {
                render(&**stats, out, name, &format!("model=\"{model}\""));
            }
        }
        header(
            out,
            "corral_model_resident_bytes",
            "gauge",
            "Measured memory of each loaded model, by model digest and the device it is on.",
        );
        for (model, device, bytes) in &gauges.models_resident {
            let _ = writeln!(
                out,
                "corral_model_resident_bytes{{model=\"{model}\",device=\"{device}\"}} {bytes}"
            );
        }
        header(
            out,
            "corral_models_memory_budget_bytes",
            "gauge",
            "Each device's model memory budget ([models] memory_bytes on the CPU, [inference] \
             device_memory_bytes on a GPU).",
        );
        for (device, bytes) in &gauges.models_budget {
            let _ = writeln!(
                out,
                "corral_models_memory_budget_bytes{{device=\"{device}\"}} {bytes}"
            );
        }
        header(
            out,
            "corral_model_load_seconds",
            "histogram",
            "Time of each model load (reading its bytes and the backend's load).",
        );
        for (device, times) in &gauges.model_load_times {
            times.render(
                out,
                "corral_model_load_seconds",
                &format!("device=\"{device}\""),
            );
        }
        header(
            out,
            "corral_tenant_compute_seconds_total",
            "counter",
            "Inference run time by tenant and device (a batch's time split by rows).",
        );
        for (tenant, device, seconds) in &gauges.tenant_compute {
            let _ = writeln!(
                out,
                "corral_tenant_compute_seconds_total{{tenant=\"{}\",device=\"{device}\"}} {seconds}",
                escape(tenant)
            );
        }
        header(
            out,
            "corral_nn_queued_runs",
            "gauge",
            "wasi:nn compute jobs waiting for a run thread, by tenant (bounded by nn_queued_runs).",
        );
        for (tenant, queued) in &gauges.nn_queued {
            let _ = writeln!(
                out,
                "corral_nn_queued_runs{{tenant=\"{}\"}} {queued}",
                escape(tenant)
            );
        }
        for (name, help, value) in [
            (
                "corral_model_loads_total",
                "Models loaded (first use, deploy validation, or reload after eviction).",
                gauges.model_loads,
            ),
            (
                "corral_model_evictions_total",
                "Idle models unloaded to keep loaded models within the memory budget.",
                gauges.model_evictions,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    /// The Prometheus text exposition, with gauges read at call time.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "corral_requests_total",
            "counter",
            "Data-plane requests answered, by tenant and HTTP status.",
        );
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

        let mut tenants: Vec<(String, Arc<TenantCounters>)> = self
            .tenants
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        tenants.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        header(
            &mut out,
            "corral_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its response head, by tenant.",
        );
        for (tenant, counters) in &tenants {
            counters.latency.render(
                &mut out,
                "corral_request_duration_seconds",
                &format!("tenant=\"{}\"", escape(tenant)),
            );
        }
        let per_tenant: [(&str, &str, CounterOf); 3] = [
            (
                "corral_guest_cpu_seconds_total",
                "Guest CPU time, counted in 10 ms epoch ticks, by tenant.",
                |c| c.cpu_ticks.load(Ordering::Relaxed) as f64 * 0.01,
            ),
            (
                "corral_guest_log_dropped_bytes_total",
                "Guest stdout/stderr bytes dropped over the tenant's log budget.",
                |c| c.log_dropped.load(Ordering::Relaxed) as f64,
            ),
            (
                "corral_requests_rejected_total",
                "Requests turned away (503) because the tenant's slots and queue were full.",
                |c| c.rejected.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in per_tenant {
            header(&mut out, name, "counter", help);
            for (tenant, counters) in &tenants {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\"}} {}",
                    escape(tenant),
                    value(counters)
                );
            }
        }
        header(
            &mut out,
            "corral_queue_depth",
            "gauge",
            "Requests waiting for one of their tenant's slots.",
        );
        for (tenant, waiting) in &gauges.queue_depth {
            let _ = writeln!(
                out,
                "corral_queue_depth{{tenant=\"{}\"}} {waiting}",
                escape(tenant)
            );
        }

        header(
            &mut out,
            "corral_deployments_total",
            "counter",
            "Deployment uploads, by tenant and result (ok or the error code).",
        );
        let mut deployments: Vec<(String, &str, u64)> = self
            .deployments
            .iter()
            .map(|e| {
                (
                    e.key().0.clone(),
                    e.key().1,
                    e.value().load(Ordering::Relaxed),
                )
            })
            .collect();
        deployments.sort_unstable();
        for (tenant, result, count) in deployments {
            let _ = writeln!(
                out,
                "corral_deployments_total{{tenant=\"{}\",result=\"{result}\"}} {count}",
                escape(&tenant)
            );
        }

        self.render_inference(&mut out, gauges);

        let gauges_rows = [
            (
                "corral_model_sessions",
                "Models loaded now (one per distinct model file).",
                gauges.models_resident.len() as u64,
            ),
            (
                "corral_tenants",
                "Tenants registered.",
                gauges.tenants as u64,
            ),
            (
                "corral_instances_in_use",
                "WebAssembly instances alive now (one per request in flight).",
                gauges.instances_in_use as u64,
            ),
            (
                "corral_inference_runs_in_flight",
                "Inference runs executing now, including stopped runs that have not yet ended.",
                gauges.inference_runs as u64,
            ),
            (
                "corral_instance_slots",
                "Instance slots of the pooling allocator (engine.instances).",
                u64::from(gauges.instance_slots),
            ),
        ];
        for (name, help, value) in gauges_rows {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }

        type StatOf = fn(&ConnectionStats) -> u64;
        let connection_rows: [(&str, &str, &str, StatOf); 3] = [
            (
                "corral_open_connections",
                "gauge",
                "Data-plane connections open now, by listener.",
                |s| s.open.load(Ordering::Relaxed) as u64,
            ),
            (
                "corral_connections_refused_total",
                "counter",
                "Connections closed on arrival because max_connections were open.",
                |s| s.refused.load(Ordering::Relaxed),
            ),
            (
                "corral_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out.",
                |s| s.failed_handshakes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, stat) in connection_rows {
            header(&mut out, name, kind, help);
            for (listener, stats) in &gauges.connections {
                let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {}", stat(stats));
            }
        }
        out
    }
}

/// Reads one per-tenant counter, in its exposed unit.
type CounterOf = fn(&TenantCounters) -> f64;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts a listener keeps (`corral_open_connections`, `corral_connections_refused_total`,
/// `corral_tls_handshake_failures_total`).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_tenant_and_status_with_latency() {
        let metrics = Metrics::default();
        metrics.record_request("acme", 200, Duration::from_millis(3));
        metrics.record_request("acme", 200, Duration::from_millis(30));
        metrics.record_request("acme", 500, Duration::from_millis(3));
        metrics.record_request("", 404, Duration::from_micros(100));
        let text = metrics.render(&Gauges {
            models_resident: vec![
                ("a".into(), "cpu".into(), 1),
                ("b".into(), "cpu".into(), 2),
                ("c".into(), "cuda:0".into(), 3),
            ],
            ..Gauges::default()
        });
        assert!(
            text.contains("corral_requests_total{tenant=\"acme\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("corral_requests_total{tenant=\"acme\",status=\"500\"} 1\n"));
        assert!(text.contains("corral_requests_total{tenant=\"\",status=\"404\"} 1\n"));
        assert!(
            text.contains(
                "corral_request_duration_seconds_bucket{tenant=\"acme\",le=\"0.005\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "corral_request_duration_seconds_bucket{tenant=\"acme\",le=\"+Inf\"} 3\n"
            )
        );
        assert!(text.contains("corral_request_duration_seconds_count{tenant=\"acme\"} 3\n"));
        assert!(text.contains("corral_model_sessions 3\n"));
        assert!(text.contains("corral_model_resident_bytes{model=\"b\",device=\"cpu\"} 2\n"));
        assert!(text.contains("corral_model_resident_bytes{model=\"c\",device=\"cuda:0\"} 3\n"));
    }
}
