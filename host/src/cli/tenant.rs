//! `corral tenant create | list | delete` (admin API).

use serde_json::json;

use super::ClientArgs;
use super::output::{join, print_json, print_table, version};
use crate::client::AdminClient;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant (or replace its host names) and print its token.
    Create {
        /// Tenant name: 1 to 63 characters from a-z, 0-9 and '-'.
        name: String,
        /// A host name the tenant is reached by (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tenants (operator token).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a tenant and its deployments (operator token).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(super) async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create {
            name,
            hosts,
            client,
        } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api
                .put_json(&format!("/v1/tenants/{name}"), &json!({ "hosts": hosts }))
                .await?;
            if client.json {
                return print_json(&answer);
            }
            let hosts = join(&answer["hosts"]);
            match answer["token"].as_str() {
                Some(token) => {
                    println!("created tenant '{name}' (hosts: {hosts})");
                    println!("token: {token}");
                    println!("(shown once: Corral keeps only its hash)");
                }
                None => println!("updated tenant '{name}' (hosts: {hosts})"),
            }
        }
        TenantCommand::List { client } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api.get("/v1/tenants").await?;
            if client.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["tenants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        t["tenant"].as_str().unwrap_or_default().to_owned(),
                        version(&t["active"]),
                        join(&t["hosts"]),
                    ]
                })
                .collect();
            print_table(&["TENANT", "ACTIVE", "HOSTS"], &rows);
        }
        TenantCommand::Delete { name, client } => {
            let api = AdminClient::new(&client.server, client.token)?;
            let answer = api.delete(&format!("/v1/tenants/{name}")).await?;
            if client.json {
                return print_json(&answer);
            }
            println!("deleted tenant '{name}'");
        }
    }
    Ok(())
}
