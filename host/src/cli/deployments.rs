//! `corral deployments` and `corral rollback`: a tenant's versions, and which one is active.

use super::ClientArgs;
use super::output::{print_json, print_table, short, version};
use crate::client::AdminClient;
use crate::clock::format_time;

#[derive(Debug, clap::Args)]
pub(crate) struct DeploymentsArgs {
    /// The tenant.
    pub tenant: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RollbackArgs {
    /// The tenant.
    pub tenant: String,
    /// The version to make active.
    pub version: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn deployments(args: DeploymentsArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    let answer = api
        .get(&format!("/v1/tenants/{}/deployments", args.tenant))
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = answer["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let models = d["models"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(name, digest)| format!("{name}={}", short(digest)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![
                version(&d["version"]),
                if d["active"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                d["created"].as_i64().map(format_time).unwrap_or_default(),
                short(&d["component"]),
                models,
            ]
        })
        .collect();
    print_table(
        &["VERSION", "ACTIVE", "CREATED", "COMPONENT", "MODELS"],
        &rows,
    );
    Ok(())
}

pub(super) async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    let answer = api
        .post(&format!(
            "/v1/tenants/{}/deployments/{}/activate",
            args.tenant, args.version
        ))
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    println!("'{}': version {} is active", args.tenant, args.version);
    Ok(())
}
