//! The TorchScript backend (`--features torch`): EfficientNet-Lite0 as TorchScript gives the
//! ONNX model's answers through the same component, in `corral run` and for a trusted tenant of
//! `corral serve`; untrusted tenants are refused; guest mistakes come back as `wasi:nn` errors.

/// Without the feature there is nothing to test here, which is fine on a developer's machine
/// and a failure in CI (its test command builds the feature).
#[cfg(not(feature = "torch"))]
#[test]
fn ci_builds_the_torch_backend() {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the tests with --features corral/torch (cargo xtask test does)"
    );
}

#[cfg(feature = "torch")]
mod torch {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use crate::common::serve::{Corral, DataDir};
    use crate::common::*;
    use hyper::StatusCode;
    use serde_json::{Value, json};

    /// Saves at `path` a TorchScript module computing `relu(x · W + b)` for `x` of shape
    /// `[batch, 16]` (W 16 × 8 and b 8 fixed), made with libtorch's tracer (no Python needed):
    /// a model small enough that batches form, whose file declares no shapes, as every
    /// TorchScript file.
    fn save_linear_model(path: &std::path::Path) -> Result<(), tch::TchError> {
        use tch::{CModule, Device, Kind, Tensor};
        let weights: Vec<f32> = (0..128)
            .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..8).map(|i| i as f32 / 10.0 - 0.4).collect();
        let w = Tensor::from_slice(&weights).reshape([16, 8]);
        let b = Tensor::from_slice(&bias);
        let example = Tensor::zeros([1, 16], (Kind::Float, Device::Cpu));
        let module = CModule::create_by_tracing("Linear", "forward", &[example], &mut |x| {
            vec![(x[0].matmul(&w) + &b).relu()]
        })?;
        module.save(path)
    }

    fn torchscript_model() -> PathBuf {
        repo().join("examples/image-classifier/model/efficientnet-lite0.pt")
    }

    static ONNX: OnceLock<Shared> = OnceLock::new();
    static TORCH: OnceLock<Shared> = OnceLock::new();
    static PROBE: OnceLock<Shared> = OnceLock::new();

    fn classifier(torch: bool) -> &'static Shared {
        if torch {
            start_shared(&TORCH, || {
                dev_options("image-classifier", &[("classifier", torchscript_model())])
            })
        } else {
            start_shared(&ONNX, || {
                dev_options("image-classifier", &[("classifier", example_model())])
            })
        }
    }

    /// The top five (index, probability) pairs of a classifier answer.
    fn top5(answer: &Value) -> Vec<(u64, f64)> {
        answer["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("no predictions in {answer}"))
            .iter()
            .map(|p| {
                (
                    p["index"].as_u64().unwrap(),
                    p["probability"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    fn assert_same(onnx: &[(u64, f64)], torch: &[(u64, f64)], what: &str) {
        let indices = |v: &[(u64, f64)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(
            indices(onnx),
            indices(torch),
            "{what}: the same top five classes"
        );
        for ((_, a), (_, b)) in onnx.iter().zip(torch) {
            assert!((a - b).abs() < 1e-3, "{what}: probabilities {a} and {b}");
        }
    }

    #[tokio::test]
    async fn torchscript_and_onnx_give_the_same_classes_in_corral_run() {
        for (image, expected) in [("dog.jpg", 207), ("kitten.png", 281)] {
            let mut answers = Vec::new();
            for torch in [false, true] {
                let (status, body) =
                    request(classifier(torch).addr, "POST", "/", sample(image)).await;
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                answers.push(top5(&json(&body)));
            }
            assert_eq!(answers[1][0].0, expected, "{image}: top-1 from TorchScript");
            assert_same(&answers[0], &answers[1], image);
        }

        // Many forwards at once on the one shared module, each answered correctly.
        let addr = classifier(true).addr;
        let requests: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(async move { request(addr, "POST", "/", sample("dog.jpg")).await })
            })
            .collect();
        for handle in requests {
            let (status, body) = handle.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(top5(&json(&body))[0].0, 207);
        }
    }

    #[tokio::test]
    async fn guest_mistakes_on_a_torchscript_model_are_wasi_nn_errors() {
        // The probe's cases send two f32 [2, 2] tensors (or broken ones) to the model `add`, here
        // EfficientNet: libtorch refuses them, and the server keeps serving.
        let probe = start_shared(&PROBE, || {
            dev_options("nn-probe", &[("add", torchscript_model())])
        });
        let cases = [
            ("add", "runtime-error", "forward"),
            ("wrong-rank", "runtime-error", "forward"),
            ("byte-length", "invalid-argument", "'a'"),
            ("huge-dims", "invalid-argument", ""),
            ("overflow-dims", "invalid-argument", ""),
            ("unknown-model", "not-found", "no-such-model"),
        ];
        for (case, code, mentions) in cases {
            let (status, body) =
                request(probe.addr, "GET", &format!("/case/{case}"), Vec::new()).await;
            assert_eq!(status, StatusCode::OK, "{case}");
            let answer = json(&body);
            assert_eq!(answer["ok"], false, "{case}: {answer}");
            assert_eq!(answer["code"], code, "{case}: {answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains(mentions), "{case}: {answer}");
            assert!(
                !message.contains("Exception raised from"),
                "{case}: no C++ backtrace"
            );
        }
        let (status, body) = request(classifier(true).addr, "POST", "/", sample("dog.jpg")).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }

    /// Deploys the image-classifier component to `vision` with `model` as `classifier`.
    async fn deploy_classifier(
        corral: &Corral,
        token: &str,
        model: &std::path::Path,
    ) -> (StatusCode, Value) {
        let component = guest("image-classifier");
        corral
            .deploy("vision", token, &component, &[("classifier", model)])
            .await
    }

    #[tokio::test]
    async fn only_trusted_tenants_deploy_torchscript_and_it_answers_like_onnx() {
        let dir = DataDir::new("torchscript");
        let corral = Corral::start(&dir, "");
        let token = corral.create_tenant("vision", "vision.localhost").await;
        let (status, body) = deploy_classifier(&corral, &token, &example_model()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, onnx) = corral
            .call("vision.localhost", "POST", "/", sample("dog.jpg"))
            .await;

        // Untrusted: 403, and the ONNX deployment keeps serving.
        let (status, body) = deploy_classifier(&corral, &token, &torchscript_model()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "untrusted_model", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("trusted_models"),
            "{body}"
        );
        let (status, _) = corral
            .call("vision.localhost", "POST", "/", sample("dog.jpg"))
            .await;
        assert_eq!(status, StatusCode::OK);

        // A tenant cannot trust itself; the operator can.
        let body = json!({ "trusted_models": true }).to_string().into_bytes();
        let (status, _) = corral
            .admin(
                "PUT",
                "/v1/tenants/vision",
                Some(&token),
                Some(("application/json".into(), body)),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = corral
            .operator(
                "PUT",
                "/v1/tenants/vision",
                json!({ "trusted_models": true }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["trusted_models"], true);

        let (status, body) = deploy_classifier(&corral, &token, &torchscript_model()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, torch) = corral
            .call("vision.localhost", "POST", "/", sample("dog.jpg"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_same(&top5(&json(&onnx)), &top5(&json(&torch)), "deployed");

        // A file that is not TorchScript is refused at upload, naming the model.
        let garbage = dir.0.join("broken.pt");
        std::fs::write(&garbage, b"PK\x03\x04 this is not a TorchScript archive").unwrap();
        let (status, body) = deploy_classifier(&corral, &token, &garbage).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_model", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("classifier") && message.contains("TorchScript"),
            "{body}"
        );

        // Revoking trust stops rollbacks to TorchScript versions too.
        let (status, _) = corral
            .operator(
                "PUT",
                "/v1/tenants/vision",
                json!({ "trusted_models": false }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = corral
            .admin(
                "POST",
                "/v1/tenants/vision/deployments/2/activate",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        // ... and the TorchScript version that was active stops serving at once.
        let (status, body) = corral
            .call("vision.localhost", "POST", "/", sample("dog.jpg"))
            .await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let (_, list) = corral
            .admin("GET", "/v1/tenants/vision/deployments", Some(&token), None)
            .await;
        assert_eq!(list["active"], Value::Null, "{list}");

        // A restore checks trust again: a record changed while the server was stopped never
        // serves TorchScript its tenant is not trusted with.
        let (status, _) = corral
            .operator(
                "PUT",
                "/v1/tenants/vision",
                json!({ "trusted_models": true }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = corral
            .admin(
                "POST",
                "/v1/tenants/vision/deployments/2/activate",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        corral.kill();
        let record_path = dir.data().join("tenants/vision/tenant.json");
        let mut record: Value =
            serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
        assert_eq!(record["active"], 2);
        record["trusted_models"] = Value::Bool(false);
        std::fs::write(&record_path, record.to_string()).unwrap();
        let corral = Corral::start(&dir, "");
        let (status, _) = corral
            .call("vision.localhost", "POST", "/", sample("dog.jpg"))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A TorchScript file declares no shapes, so it batches only when its deployment's config
    /// names the batch axis: then concurrent requests run as batches, and each request gets the
    /// rows it gets alone (libtorch's batched kernels may differ in the last bits: 1e-4). The
    /// model is a small linear layer traced by libtorch (a large one would run one row per
    /// batch: the scheduler keeps a batch's run short).
    #[tokio::test]
    async fn torchscript_batches_on_the_axis_its_deployment_config_names() {
        use crate::common::serve::{Part, multipart};
        let dir = DataDir::new("torch-batching");
        let linear = dir.0.join("linear.pt");
        save_linear_model(&linear).unwrap();
        let corral = std::sync::Arc::new(Corral::start(&dir, "[inference]\nruns = 1\n"));
        let (status, body) = corral
            .operator(
                "PUT",
                "/v1/tenants/batched",
                json!({ "hosts": ["batched.test"], "trusted_models": true }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        let config = json!({
            "batching": { "max_delay_us": 100000 },
            "models": { "model": { "batch_axis": 0 } },
        });
        let parts = [
            Part::file("component", &guest("bench-nn")),
            Part::file("model.model", &linear),
            Part::bytes("config", "config.json", config.to_string().into_bytes()),
        ];
        let (status, body) = corral
            .admin(
                "POST",
                "/v1/tenants/batched/deployments",
                Some(&token),
                Some(multipart(&parts)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let row = |n: usize| -> Vec<u8> {
            (0..16)
                .flat_map(|i| (((i * 31 + n * 17) % 23) as f32 / 11.0 - 1.0).to_le_bytes())
                .collect()
        };
        let call = |corral: std::sync::Arc<Corral>, n: usize| async move {
            let (status, body) = crate::common::serve::send(
                corral.data,
                "POST",
                "/tensor",
                "batched.test",
                &[("x-shape", "1,16"), ("x-input", "input")],
                row(n),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<f32>>()
        };
        let mut alone = Vec::new();
        for n in 0..8 {
            alone.push(call(std::sync::Arc::clone(&corral), n).await);
        }
        let together: Vec<_> = (0..8)
            .map(|n| tokio::spawn(call(std::sync::Arc::clone(&corral), n)))
            .collect();
        for (n, task) in together.into_iter().enumerate() {
            let got = task.await.unwrap();
            assert_eq!(got.len(), alone[n].len());
            for (g, w) in got.iter().zip(&alone[n]) {
                assert!(
                    (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                    "request {n}: {g} != {w}"
                );
            }
        }
        let metrics = corral.metrics_text().await;
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (runs, rows) = (
            value("corral_nn_batch_size_count"),
            value("corral_nn_batch_size_sum"),
        );
        assert_eq!(rows, 16.0, "{metrics}");
        assert!(runs < 16.0, "16 requests in {runs} runs: none was batched");
    }
}
