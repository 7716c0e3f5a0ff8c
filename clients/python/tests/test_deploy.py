"""`corral.Client.deploy` and `Deployment.predict` against a real `corral serve`: each kind of
model deployed with one call, its predictions compared with the framework's own, and the
mistakes a user makes answered with clear errors while the deployment keeps serving."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import corral

from conftest import REPO, Server


@pytest.fixture
def client(server: Server) -> corral.Client:
    # Tenants' host names do not resolve here: send to the data plane's address.
    return server.client(data_plane=server.data_plane)


def tenant(client: corral.Client, name: str, **options) -> str:
    created = client.create_tenant(name, f"{name}.localhost", **options)
    assert created["token"].startswith("corral_t_"), created
    return name


def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


def test_a_scikit_learn_pipeline_deploys_in_one_call_and_predicts_as_scikit_learn(client):
    X, y = iris()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    deployment = client.deploy(pipeline, "iris", tenant=tenant(client, "iris"),
                               example_input=X[:5])
    assert deployment.version == 1
    assert "matches the framework" in deployment.checked
    assert deployment.url.startswith("https://iris.localhost:"), deployment.urls
    meta = deployment.metadata()
    assert [i["name"] for i in meta["inputs"]] == ["X"]
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == [-1, 4]

    # All 150 rows, as float64: cast to the model's FP32 by the client.
    got = deployment.predict(X)
    assert set(got) == {"label", "probabilities"}
    np.testing.assert_array_equal(got["label"], pipeline.predict(X))
    np.testing.assert_allclose(got["probabilities"], pipeline.predict_proba(X), atol=1e-5)
    assert got["probabilities"].dtype == np.float32
    # One output, by name.
    assert set(deployment.predict(X[:2], outputs=["label"])) == {"label"}


def test_a_pytorch_module_deploys_with_a_dynamic_batch_and_predicts_as_torch(client):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3), torch.nn.Softmax(-1))
    module.train()  # as it is after training: deploy exports it for inference
    deployment = client.deploy(module, "mlp", tenant=tenant(client, "torch-mlp"),
                               example_input=torch.randn(4, 8))
    assert module.training, "the caller's module is left in the mode it was in"
    module.eval()
    assert "matches the framework" in deployment.checked
    assert deployment.metadata()["inputs"][0]["shape"] == [-1, 8]
    # A batch of another size than the example's.
    x = torch.randn(37, 8)
    got = deployment.predict(x.numpy())
    assert list(got) == ["output"]
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(got["output"], want, rtol=1e-4, atol=1e-6)


def test_a_large_upload_shows_its_progress(client, capfd):
    torch.manual_seed(0)
    wide = torch.nn.Linear(768, 768)  # 2.4 MB of weights
    deployment = client.deploy(wide, "wide", tenant=tenant(client, "progress"),
                               example_input=torch.randn(2, 768), progress=True)
    shown = capfd.readouterr().err
    assert "corral: uploading" in shown and "(100%)\n" in shown, shown
    x = torch.randn(3, 768)
    with torch.no_grad():
        want = wide(x).numpy()
    np.testing.assert_allclose(deployment.predict(x.numpy())["output"], want, rtol=1e-4,
                               atol=1e-5)


def test_an_upload_the_server_stops_halfway_gets_its_reason(client):
    # A quota far below the model: the server refuses while the body is still streaming.
    name = tenant(client, "small")
    client._admin("PUT", f"/v1/tenants/{name}", {"limits": {"storage_bytes": 100_000}})
    with pytest.raises(corral.CorralError) as refused:
        client.deploy(torch.nn.Linear(1024, 1024), "big", tenant=name,
                      example_input=torch.randn(2, 1024))
    assert refused.value.status == 507, refused.value
    assert refused.value.code == "storage_quota_exceeded", refused.value
    # And an unknown tenant is refused before anything is exported or sent.
    with pytest.raises(corral.CorralError) as unknown:
        client.deploy(object(), "thing", tenant="no-such-tenant")
    assert unknown.value.status == 404, unknown.value


def test_an_mlflow_model_directory_deploys_its_flavor(client, tmp_path: Path):
    import mlflow.sklearn

    X, y = iris()
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    directory = tmp_path / "forest"
    mlflow.sklearn.save_model(forest, str(directory), input_example=X[:3],
                              serialization_format="cloudpickle")
    # No example_input: the model's saved input example is used.
    deployment = client.deploy(str(directory), "forest", tenant=tenant(client, "mlflow"))
    assert "matches the framework" in deployment.checked
    got = deployment.predict(X)
    np.testing.assert_array_equal(got["label"], forest.predict(X))
    np.testing.assert_allclose(got["probabilities"], forest.predict_proba(X), atol=1e-5)


def test_a_hugging_face_feature_extraction_pipeline_serves_sentence_embeddings(client,
                                                                            tmp_path: Path):
    from transformers import (BertConfig, BertForSequenceClassification, BertModel,
                              BertTokenizer, pipeline)

    # No download: a small BERT (random weights) with MiniLM's uncased WordPiece vocabulary.
    (tmp_path / "vocab.txt").write_bytes(
        (REPO / ".corral/models/text-embedding/vocab.txt").read_bytes())
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    extractor = pipeline("feature-extraction", model=BertModel(config).eval(),
                         tokenizer=tokenizer)
    name = tenant(client, "hf")
    deployment = client.deploy(extractor, "encoder", tenant=name)
    assert deployment.builtin == "text-embedding"
    assert "matches the framework" in deployment.checked

    # Corral tokenizes (corral_guest::text), runs and pools; the pipeline's token vectors,
    # averaged and normalized, are the same embeddings.
    sentences = ["A man plays guitar.", "Crème brûlée, déjà vu!", "Rain in Zürich today."]
    got = deployment.predict(sentences)
    want = []
    for sentence in sentences:
        mean = np.mean(np.asarray(extractor(sentence))[0], axis=0)
        want.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(got["embeddings"], np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.diag(got["similarity"]), np.ones(3), atol=1e-5)
    # More sentences than one request carries.
    assert deployment.predict(["word"] * 40)["embeddings"].shape == (40, 32)

    classifier = pipeline("text-classification",
                          model=BertForSequenceClassification(config).eval(),
                          tokenizer=tokenizer)
    with pytest.raises(corral.CorralError, match="'text-classification' pipeline is not one"):
        client.deploy(classifier, "classifier", tenant=name)


def test_a_bare_onnx_file_deploys_as_it_is(client):
    add = REPO / "tests/fixtures/add.onnx"
    name = tenant(client, "onnx-file")
    deployment = client.deploy(add, "add", tenant=name)
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b = np.full((2, 2), 10, dtype=np.float32)
    np.testing.assert_array_equal(deployment.predict({"a": a, "b": b})["sum"], a + b)
    # Its bytes and a sequence of inputs in the model's order work too.
    again = client.deploy(add.read_bytes(), "add", tenant=name, example_input=(a, b))
    assert again.version == 2
    assert again.checked == "runs in ONNX Runtime on example_input"
    np.testing.assert_array_equal(again.predict([a, b])["sum"], a + b)
    # And the active deployment can be found again later.
    found = client.deployment(name, "add")
    assert found.version == 2 and found.urls == again.urls


def test_predict_follows_the_https_url_of_the_answer(server: Server, monkeypatch):
    monkeypatch.delenv("CORRAL_CA_FILE", raising=False)
    # No data_plane: the deployment's own URL, HTTPS with Corral's development CA, and the
    # tenant's .localhost name sent to loopback.
    client = server.client(ca_file=server.ca_file)
    name = tenant(client, "tls")
    deployment = client.deploy(REPO / "tests/fixtures/add.onnx", "add", tenant=name)
    assert deployment.url == f"https://tls.localhost:{server.https.rsplit(':', 1)[1]}/"
    ones = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(deployment.predict({"a": ones, "b": ones})["sum"], 2 * ones)
    # Without the CA the certificate is not trusted, and the error says what to do.
    untrusting = server.client()
    with pytest.raises(corral.CorralError, match="ca_file"):
        untrusting.deployment(name, "add").predict({"a": ones, "b": ones})


def test_torchscript_goes_to_a_trusted_tenant_only(client):
    torch.manual_seed(0)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()))
    x = torch.randn(5, 3)
    with pytest.raises(corral.CorralError) as refused:
        client.deploy(scripted, "scripted", tenant=tenant(client, "untrusted"), example_input=x)
    assert refused.value.status == 403, refused.value
    deployment = client.deploy(scripted, "scripted",
                               tenant=tenant(client, "trusted", trusted_models=True),
                               example_input=x)
    assert "matches the framework" in deployment.checked
    with torch.no_grad():
        want = scripted(x).numpy()
    # TorchScript declares no names: outputs are numbered as the server numbers them.
    got = deployment.predict(x.numpy())
    np.testing.assert_allclose(got["output0"], want, rtol=1e-5, atol=1e-6)


class Branchy(torch.nn.Module):
    """Different under export than when run: the export check must catch it."""

    def forward(self, x):
        if torch.compiler.is_compiling():
            return x * 2
        return x


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value, which torch.export cannot capture."""

    def forward(self, x):
        if x.sum().item() > 0:
            return x
        return -x


def test_what_cannot_be_deployed_is_refused_before_anything_is_uploaded(client):
    name = tenant(client, "refusals")
    X, y = iris()
    good = client.deploy(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
                         "iris", tenant=name, example_input=X[:5])

    with pytest.raises(corral.CorralError, match="cannot deploy a builtins.object"):
        client.deploy(object(), "thing", tenant=name)
    with pytest.raises(corral.CorralError, match="pass example_input="):
        client.deploy(torch.nn.Linear(2, 2), "linear", tenant=name)
    with pytest.raises(corral.CorralError, match="cannot export this DataDependent"):
        client.deploy(DataDependent(), "branch", tenant=name, example_input=torch.ones(2, 3))
    with pytest.raises(corral.CorralError,
                       match=r"output 'output' differs by up to 1\b") as mismatch:
        client.deploy(Branchy(), "branchy", tenant=name, example_input=torch.ones(2, 3))
    assert "does not match the framework" in str(mismatch.value)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    strings = LogisticRegression(max_iter=500).fit(X, labels)
    with pytest.raises(corral.CorralError, match="output 'label' is tensor\\(string\\)"):
        client.deploy(strings, "strings", tenant=name, example_input=X[:5])
    with pytest.raises(corral.CorralError, match="cannot read the model"):
        client.deploy("no-such-model.onnx", "missing", tenant=name)

    # None of it reached the server: the first deployment is still the only one, and serves.
    listing = client._admin("GET", f"/v1/tenants/{name}/deployments")
    assert [d["version"] for d in listing["deployments"]] == [1]
    np.testing.assert_array_equal(good.predict(X[:3])["label"], [0, 0, 0])


def test_bad_requests_get_clear_errors_and_the_deployment_keeps_serving(client, server):
    X, y = iris()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    deployment = client.deploy(pipeline, "iris", tenant=tenant(client, "mistakes"),
                               example_input=X[:5])

    # The wrong shape: 3 features where the model takes 4.
    with pytest.raises(corral.CorralError) as wrong_shape:
        deployment.predict(X[:, :3])
    assert wrong_shape.value.status == 400, wrong_shape.value
    assert "X" in wrong_shape.value.message
    # The wrong datatype, refused by the client (float to an integer is not a cast it makes)...
    with pytest.raises(corral.CorralError, match="input 'X' is FP32 but the array given is"):
        deployment.predict(np.array([["a", "b", "c", "d"]]))
    # ... and by the server, from any client.
    request = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64",
                           "data": [1, 2, 3, 4]}]}
    status, answer = raw_infer(server, "mistakes.localhost", "iris", request)
    assert status == 400, answer
    assert answer["error"] == "input 'X' of model 'iris' is FP32; the request gives INT64", answer
    # An unknown model name.
    with pytest.raises(corral.CorralError) as unknown:
        client.deployment("mistakes", "no-such-model").predict(X[:1])
    assert unknown.value.status == 404, unknown.value
    assert "no-such-model" in unknown.value.message

    np.testing.assert_array_equal(deployment.predict(X)["label"], pipeline.predict(X))


def raw_infer(server: Server, host: str, model: str, request: dict) -> tuple[int, dict]:
    address = server.data_plane.removeprefix("http://")
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("POST", f"/v2/models/{model}/infer", body=json.dumps(request),
                       headers={"Host": host, "Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())
