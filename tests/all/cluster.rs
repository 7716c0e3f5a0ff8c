//! Cluster mode's records in a real PostgreSQL (`[cluster] database_url`): tenants and
//! deployments live in the database, a server restarted on the same database serves them
//! again, and a second server sharing the database cannot give one host name to two
//! tenants. The database server is started by the test (`tests/support/postgres.rs`).

use hyper::StatusCode;
use serde_json::json;

use crate::common::serve::{Corral, DataDir, Part, multipart, send, serve_refused};
use crate::common::*;

#[path = "../support/postgres.rs"]
mod postgres_server;
#[path = "../support/s3.rs"]
mod s3_server;

const TOKEN: &str = "cluster-operator-token-0123456789";

/// The configuration of servers sharing the database at `database_url` and a fresh bucket
/// named after `name`, polling each other's changes every 200 ms.
fn shared_config(database_url: &str, s3: &s3_server::S3, name: &str) -> String {
    polling_config(database_url, s3, name, 200)
}

/// [`shared_config`] polling every `poll_ms`.
fn polling_config(database_url: &str, s3: &s3_server::S3, name: &str, poll_ms: u64) -> String {
    format!(
        "{}blob_url = \"s3://{}/corral\"\npoll_interval_ms = {poll_ms}\n",
        cluster_config(database_url),
        s3.bucket(name)
    )
}

fn cluster_config(database_url: &str) -> String {
    format!("admin_token = \"{TOKEN}\"\n[cluster]\ndatabase_url = \"{database_url}\"\n")
}

#[tokio::test]
async fn tenants_and_deployments_live_in_the_database_and_a_host_has_one_owner() {
    let Some(server) = postgres_server::postgres() else {
        return;
    };
    let url = server.database("serve");
    let database = url.rsplit('/').next().unwrap().to_owned();
    let dir = DataDir::new("cluster-a");
    let mut a = Corral::start(&dir, &cluster_config(&url));
    a.probe_tenant("acme", "acme.test").await;
    let (status, _) = a.call("acme.test", "GET", "/case/add", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server
            .psql(
                &database,
                "SELECT count(*) FROM corral_tenants t JOIN corral_deployments d \
                 ON d.tenant = t.name WHERE t.record->>'active' = '1'"
            )
            .unwrap(),
        "1",
        "the tenant and its active deployment are in the database"
    );
    assert!(
        !dir.data().join("tenants/acme").exists(),
        "nothing about the tenant in the data directory"
    );

    // A second server on the same database: the host name belongs to acme, whichever server
    // is asked; the database decides.
    let other = DataDir::new("cluster-b");
    let b = Corral::start(&other, &cluster_config(&url));
    let (status, body) = b
        .operator(
            "PUT",
            "/v1/tenants/thief",
            json!({ "hosts": ["acme.test"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acme.test"),
        "{body}"
    );
    let (status, body) = b.admin("GET", "/v1/tenants/thief", Some(TOKEN), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing half-created: {body}"
    );

    // Restarted on the same database (and its own blobs), the first server serves again.
    a.terminate();
    a.wait_exit(std::time::Duration::from_secs(20));
    let a = Corral::start(&dir, &cluster_config(&url));
    let (status, _) = a.call("acme.test", "GET", "/case/add", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{}", a.log_text());
}

/// Replicas must agree on the operator token, so cluster mode never generates one.
#[test]
fn cluster_mode_needs_the_operator_token_given() {
    let stderr = serve_refused(
        "cluster-token",
        "[cluster]\ndatabase_url = \"postgres://corral@127.0.0.1:1/none\"\n",
    );
    assert!(
        stderr.contains("database_url") && stderr.contains("CORRAL_ADMIN_TOKEN"),
        "{stderr}"
    );
}

/// The first server on a database records the operator token's hash; one given another
/// token refuses to start, naming the setting, and the database never holds the token itself.
#[test]
fn servers_sharing_a_database_must_share_the_operator_token() {
    let Some(postgres) = postgres_server::postgres() else {
        return;
    };
    let url = postgres.database("token");
    let database = url.rsplit('/').next().unwrap().to_owned();
    let dir = DataDir::new("cluster-token-first");
    let first = Corral::start(&dir, &cluster_config(&url));
    let stderr = serve_refused(
        "cluster-token-other",
        &cluster_config(&url).replace(TOKEN, "another-operator-token-0123456789"),
    );
    assert!(
        stderr.contains("operator token") && stderr.contains("operator_token_sha256"),
        "{stderr}"
    );
    let stored = postgres
        .psql(&database, "SELECT value FROM corral_settings")
        .unwrap();
    assert_eq!(stored.len(), 64, "a sha256 in hex: {stored}");
    assert!(!stored.contains(TOKEN));
    drop(first);
    // The same token is accepted again.
    Corral::start(&DataDir::new("cluster-token-same"), &cluster_config(&url));
}

/// A database that cannot be reached stops the start, naming it without its password.
#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr = serve_refused(
        "cluster-unreachable",
        &format!(
            "admin_token = \"{TOKEN}\"\n[cluster]\n\
             database_url = \"postgres://corral:hunter2@127.0.0.1:{port}/corral\"\n"
        ),
    );
    assert!(
        stderr.contains("cannot open the database") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// With records in PostgreSQL and blobs in S3, a server started later on an empty data
/// directory serves every tenant another server deployed: it reads the database, fetches the
/// blobs, compiles and loads.
#[tokio::test]
async fn a_server_with_an_empty_disk_serves_what_another_deployed() {
    let (Some(postgres), Some(s3)) = (postgres_server::postgres(), s3_server::s3()) else {
        return;
    };
    let config = shared_config(&postgres.database("blobs"), s3, "blobs");
    let env = s3.env();
    let dir_a = DataDir::new("cluster-blobs-a");
    let a = Corral::start_with_env(&dir_a, &config, &env);
    for tenant in ["alpha", "beta"] {
        a.probe_tenant(tenant, &format!("{tenant}.test")).await;
    }
    let dir_b = DataDir::new("cluster-blobs-b");
    let b = Corral::start_with_env(&dir_b, &config, &env);
    for tenant in ["alpha", "beta"] {
        let (status, body) = b
            .call(&format!("{tenant}.test"), "GET", "/case/add", Vec::new())
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{tenant}: {body:?}\n{}",
            b.log_text()
        );
    }
    assert!(
        std::fs::read_dir(dir_b.data().join("cache/blobs"))
            .unwrap()
            .count()
            >= 2,
        "the component and the model were fetched into b's cache"
    );
}

/// Servers sharing a bucket collect from it (one at a time) what no deployment refers to: a
/// deleted tenant's model goes once the grace period has passed, while every blob a stored
/// deployment refers to stays, and a server with an empty disk still serves those.
#[tokio::test]
async fn the_shared_bucket_loses_only_what_no_deployment_refers_to() {
    let (Some(postgres), Some(s3)) = (postgres_server::postgres(), s3_server::s3()) else {
        return;
    };
    let bucket = s3.bucket("collect");
    let config = format!(
        "{}blob_url = \"s3://{bucket}/corral\"\npoll_interval_ms = 200\n\
         collect_interval_secs = 1\nblob_grace_secs = 15\n",
        cluster_config(&postgres.database("collect"))
    );
    let env = s3.env();
    let (dir_a, dir_b) = (DataDir::new("collect-a"), DataDir::new("collect-b"));
    let a = Corral::start_with_env(&dir_a, &config, &env);
    let b = Corral::start_with_env(&dir_b, &config, &env);
    a.probe_tenant("alpha", "alpha.test").await;
    let token = a.create_tenant("beta", "beta.test").await;
    let (status, body) = a
        .deploy(
            "beta",
            &token,
            &guest("image-classifier"),
            &[("classifier", &example_model())],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = b
        .admin("DELETE", "/v1/tenants/beta", Some(TOKEN), None)
        .await;
    assert!(status.is_success(), "{body}");

    let object = |path: &std::path::Path| {
        let digest = corral::Digest::of(&std::fs::read(path).unwrap());
        let status = s3.request(
            "HEAD",
            &format!("/{bucket}/corral/blobs/sha256/{}", digest.hex()),
        );
        status.expect("the S3 server answers")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while object(&example_model()) != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted tenant's model is still in the bucket after 60 s\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(object(&fixture("add.onnx")), 200, "alpha's model stays");
    assert_eq!(object(&guest("nn-probe")), 200, "alpha's component stays");
    let dir_c = DataDir::new("collect-c");
    let c = Corral::start_with_env(&dir_c, &config, &env);
    until_answers(&c, "alpha.test", add(), StatusCode::OK, "sum").await;
}

/// Asks `corral` until `host` answers `method path` with `want` and a body containing
/// `needle` (other servers' changes arrive within a poll interval, plus a build).
async fn until_answers(
    corral: &Corral,
    host: &str,
    (method, path, body): (&str, &str, Vec<u8>),
    want: StatusCode,
    needle: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, answer) = corral.call(host, method, path, body.clone()).await;
        if status == want && String::from_utf8_lossy(&answer).contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host} still answers {status} {answer:?}, not {want} with {needle:?}, after 30 s\n{}",
            corral.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until `corral`'s `GET /v1/status` says it is not behind; its answer.
async fn until_caught_up(corral: &Corral) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = corral.admin("GET", "/v1/status", Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["behind"] == false && body["revision"] == body["store_revision"] {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn add() -> (&'static str, &'static str, Vec<u8>) {
    ("GET", "/case/add", Vec::new())
}

fn classify() -> (&'static str, &'static str, Vec<u8>) {
    ("POST", "/", sample("dog.jpg"))
}

/// Three servers sharing PostgreSQL and S3 behave as one: a tenant created and deployed
/// through one is served by the others, a new version through another and a rollback through
/// the third reach every server, a deletion too, and each reports the revision it has applied.
/// They poll only every ten minutes: every change travels by the database's notifications.
#[tokio::test]
async fn servers_sharing_a_database_apply_each_others_changes() {
    let (Some(postgres), Some(s3)) = (postgres_server::postgres(), s3_server::s3()) else {
        return;
    };
    let config = polling_config(&postgres.database("follow"), s3, "follow", 600_000);
    let env = s3.env();
    let dirs: Vec<DataDir> = (0..3)
        .map(|i| DataDir::new(&format!("cluster-follow-{i}")))
        .collect();
    let servers: Vec<Corral> = dirs
        .iter()
        .map(|dir| Corral::start_with_env(dir, &config, &env))
        .collect();
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);

    // Created and deployed through a: b and c serve it (the tenant's token works there too).
    let token = a.probe_tenant("acme", "acme.test").await;
    for server in [b, c] {
        until_answers(server, "acme.test", add(), StatusCode::OK, "sum").await;
    }

    // Version 2 (the image classifier) through b, then back to version 1 through c.
    let (status, body) = b
        .deploy(
            "acme",
            &token,
            &guest("image-classifier"),
            &[("classifier", &example_model())],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 2);
    for server in [a, c] {
        until_answers(
            server,
            "acme.test",
            classify(),
            StatusCode::OK,
            "golden retriever",
        )
        .await;
    }
    let (status, body) = c
        .admin(
            "POST",
            "/v1/tenants/acme/deployments/1/activate",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for server in [a, b] {
        until_answers(server, "acme.test", add(), StatusCode::OK, "sum").await;
    }

    // Deleted through c: gone everywhere.
    let (status, body) = c
        .admin("DELETE", "/v1/tenants/acme", Some(TOKEN), None)
        .await;
    assert!(status.is_success(), "{body}");
    for server in [a, b] {
        until_answers(
            server,
            "acme.test",
            add(),
            StatusCode::NOT_FOUND,
            "unknown_host",
        )
        .await;
    }

    // Every server has applied everything the store holds.
    for server in &servers {
        let status = until_caught_up(server).await;
        assert!(status["revision"].as_u64().unwrap() >= 5, "{status}");
    }
    let (status, _) = a.admin("GET", "/v1/status", Some(&token), None).await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status}"
    );
}

/// PostgreSQL stopped for ten seconds under load: servers keep answering every request with
/// 200, stay ready and report themselves behind; once it is back, a change made through one
/// reaches the other.
#[tokio::test]
async fn a_database_outage_leaves_servers_serving_and_they_catch_up() {
    let (Some(postgres), Some(s3)) = (postgres_server::own_postgres(), s3_server::s3()) else {
        return;
    };
    let config = shared_config(&postgres.database("outage"), s3, "outage");
    let env = s3.env();
    let (dir_a, dir_b) = (DataDir::new("outage-a"), DataDir::new("outage-b"));
    let a = Corral::start_with_env(&dir_a, &config, &env);
    let b = Corral::start_with_env(&dir_b, &config, &env);
    a.probe_tenant("acme", "acme.test").await;
    until_answers(&b, "acme.test", add(), StatusCode::OK, "sum").await;

    postgres.stop();
    let stopped = std::time::Instant::now();
    let (mut served, mut behind) = (0, false);
    while stopped.elapsed() < std::time::Duration::from_secs(10) {
        for server in [&a, &b] {
            let (status, body) = server
                .call("acme.test", "GET", "/case/add", Vec::new())
                .await;
            assert_eq!(status, StatusCode::OK, "served during the outage: {body:?}");
            served += 1;
        }
        let (status, body) = b.admin("GET", "/v1/status", Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        behind |= body["behind"] == true && body["error"].is_string();
        let (status, _) = a.admin("GET", "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK, "still ready: it serves what it has");
    }
    assert!(behind, "b reported the outage in /v1/status");
    assert!(served > 20, "{served} requests during the outage");
    postgres.start();

    // Back: a change through a (retried, as a client retries a 500 during an outage)
    // reaches b.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = a
            .operator("PUT", "/v1/tenants/beta", json!({ "hosts": ["beta.test"] }))
            .await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    until_answers(
        &b,
        "beta.test",
        add(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no_active_deployment",
    )
    .await;
    until_caught_up(&b).await;
}

/// A server killed (SIGKILL) under steady load leaves the two others serving every request;
/// one killed in the middle of a deploy leaves nothing half-written that others see: the
/// tenant keeps its version everywhere, the database has no trace of the new one, and the
/// killed server, restarted, serves that version too.
#[tokio::test]
async fn killed_servers_leave_the_others_serving_and_nothing_half_written() {
    let (Some(postgres), Some(s3)) = (postgres_server::postgres(), s3_server::s3()) else {
        return;
    };
    let url = postgres.database("kill");
    let database = url.rsplit('/').next().unwrap().to_owned();
    let config = shared_config(&url, s3, "kill");
    let env = s3.env();
    let dirs: Vec<DataDir> = (0..3).map(|i| DataDir::new(&format!("kill-{i}"))).collect();
    let mut servers: Vec<Corral> = dirs
        .iter()
        .map(|dir| Corral::start_with_env(dir, &config, &env))
        .collect();
    let token = servers[0].probe_tenant("acme", "acme.test").await;
    for server in &servers[1..] {
        until_answers(server, "acme.test", add(), StatusCode::OK, "sum").await;
    }

    // Load on b and c; a is killed in the middle of it.
    let killed = servers.remove(0);
    let mut kill = Some(killed);
    let mut served = 0;
    for round in 0..60 {
        if round == 20 {
            kill.take().unwrap().kill();
        }
        for server in &servers {
            let (status, body) = server
                .call("acme.test", "GET", "/case/add", Vec::new())
                .await;
            assert_eq!(status, StatusCode::OK, "round {round}: {body:?}");
            served += 1;
        }
    }
    assert_eq!(served, 120);

    // b is killed while it takes a deploy (the upload, or the validation after it).
    let b = servers.remove(0);
    let deploy = {
        let parts = [
            Part::file("component", &guest("image-classifier")),
            Part::file("model.classifier", &example_model()),
        ];
        let (content_type, body) = multipart(&parts);
        let admin = b.admin;
        let authorization = format!("Bearer {token}");
        tokio::spawn(async move {
            send(
                admin,
                "POST",
                "/v1/tenants/acme/deployments",
                "localhost",
                &[
                    ("authorization", authorization.as_str()),
                    ("content-type", content_type.as_str()),
                ],
                body,
            )
            .await
        })
    };
    // Killed once the upload has started storing its blobs: the component is marked in the
    // database, while the model, the validation and the record are still to come.
    let component = corral::Digest::of(&std::fs::read(guest("image-classifier")).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while postgres
        .psql(
            &database,
            &format!("SELECT count(*) FROM corral_blob_uploads WHERE digest = '{component}'"),
        )
        .unwrap()
        != "1"
    {
        assert!(std::time::Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    b.kill();
    let _ = deploy.await;
    let c = &servers[0];
    let (status, body) = c
        .admin("GET", "/v1/tenants/acme/deployments", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], 1, "{body}");
    assert_eq!(
        body["deployments"].as_array().unwrap().len(),
        1,
        "no second version: {body}"
    );
    assert_eq!(
        postgres
            .psql(&database, "SELECT count(*) FROM corral_deployments")
            .unwrap(),
        "1"
    );
    let (status, _) = c.call("acme.test", "GET", "/case/add", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let restarted = Corral::start_with_env(&dirs[1], &config, &env);
    until_answers(&restarted, "acme.test", add(), StatusCode::OK, "sum").await;
}

/// The configuration the Kubernetes manifests ship (deploy/kubernetes/config.yaml) is one
/// `corral serve` accepts, and the pod's grace period outlasts its drain timeout.
#[test]
fn the_kubernetes_configuration_is_valid() {
    let manifests = repo().join("deploy/kubernetes");
    let config_map = std::fs::read_to_string(manifests.join("config.yaml")).unwrap();
    let toml: String = config_map
        .split_once("corral.toml: |\n")
        .expect("config.yaml holds corral.toml")
        .1
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let dir = DataDir::new("kubernetes-config");
    let file = dir.0.join("corral.toml");
    std::fs::write(&file, &toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["config", "check"])
        .arg(&file)
        .env(
            "CORRAL_CLUSTER_DATABASE_URL",
            "postgres://corral:secret@db/corral",
        )
        .env("CORRAL_CLUSTER_BLOB_URL", "s3://corral-blobs")
        .env("CORRAL_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("listen = \"0.0.0.0:8080\""), "{stdout}");
    assert!(
        !stdout.contains("secret@"),
        "the password is not shown: {stdout}"
    );

    let drain: u64 = toml
        .lines()
        .find_map(|l| l.strip_prefix("drain_timeout_secs = "))
        .expect("drain_timeout_secs is set")
        .trim()
        .parse()
        .unwrap();
    let deployment = std::fs::read_to_string(manifests.join("deployment.yaml")).unwrap();
    let grace: u64 = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .expect("terminationGracePeriodSeconds is set")
        .parse()
        .unwrap();
    assert!(grace > drain + 5, "grace {grace} s, drain {drain} s");
}
