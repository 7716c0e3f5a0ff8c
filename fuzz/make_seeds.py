"""Writes the seed corpora in fuzz/corpus/ (run from the repository root: python3 fuzz/make_seeds.py).

Seeds are small, valid-looking inputs of each parser, plus the hostile ones the security issue
describes, so a fuzzing run starts from the interesting places. Inputs a fuzzing run keeps are
added beside them (file names are their sha1, as libFuzzer writes them).
"""

import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- protobuf, as host/parsers/src/onnx/testing.rs encodes it ---
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field(n, payload):
    return varint(n << 3 | 2) + varint(len(payload)) + payload


def number(n, v):
    return varint(n << 3) + varint(v)


def external_tensor(name, location, length):
    entry = field(1, b"location") + field(2, location)
    return number(1, length) + number(2, 2) + field(8, name) + field(13, entry) + number(14, 1)


def inline_tensor(name):
    return field(8, name) + number(1, 1) + number(2, 2) + field(9, b"\x07")


def model(graph=b"", functions=b"", training=b""):
    opset = field(8, field(1, b"") + number(2, 17))
    out = number(1, 10) + opset
    if graph:
        out += field(7, graph)
    if training:
        out += field(20, training)
    return out + functions


def leak_function(tensor):
    default = field(1, b"w") + number(20, 4) + field(5, tensor)
    reference = field(1, b"value") + number(20, 4) + field(21, b"w")
    constant = field(2, b"out") + field(4, b"Constant") + field(5, reference)
    function = (field(1, b"Leak") + field(5, b"out") + field(7, constant)
                + field(9, field(1, b"") + number(2, 17)) + field(10, b"local") + field(11, default))
    return field(25, function)


def onnx_seeds():
    for fixture in sorted((ROOT / "tests" / "fixtures").glob("*.onnx")):
        write("onnx_check", fixture.name, fixture.read_bytes())
    secret = b"corral-data/admin-token"
    call = field(2, b"y") + field(4, b"Leak") + field(7, b"local")
    graph = field(1, call) + field(2, b"g")
    write("onnx_check", "function-default-external", model(graph, leak_function(external_tensor(b"w", secret, 15))))
    write("onnx_check", "function-default-inline", model(graph, leak_function(inline_tensor(b"w"))))
    attribute = lambda tensor: field(1, b"value") + number(20, 4) + field(5, tensor)
    node = lambda tensor: field(1, field(4, b"Constant") + field(5, attribute(tensor)))
    write("onnx_check", "node-attribute-external", model(node(external_tensor(b"t", secret, 1))))
    sub = node(inline_tensor(b"inner"))
    branch = field(1, b"then_branch") + number(20, 5) + field(6, sub)
    write("onnx_check", "subgraph-inline", model(field(1, field(4, b"If") + field(5, branch))))
    sparse = field(1, inline_tensor(b"values")) + field(2, inline_tensor(b"indices"))
    write("onnx_check", "sparse-initializer", model(field(15, sparse)))
    write("onnx_check", "training-info", model(training=field(1, field(5, inline_tensor(b"init")))))


def multipart_seeds():
    def body(parts, boundary=b"b0undary", preamble=b""):
        out = preamble
        for head, data in parts:
            out += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
        return out + b"--" + boundary + b"--\r\n"
    component = (b'Content-Disposition: form-data; name="component"; filename="c.wasm"\r\n'
                 b"Content-Type: application/wasm", b"\0asm\x01\0\0\0")
    model_part = (b'content-disposition: form-data; name="model.add"; filename="add.onnx"',
                  (ROOT / "tests" / "fixtures" / "add.onnx").read_bytes())
    format_part = (b"Content-Disposition: form-data; name=format.add", b"onnx")
    write("multipart", "upload", bytes([7]) + body([component, model_part, format_part]))
    write("multipart", "preamble", bytes([1]) + body([component], preamble=b"ignored\r\n"))
    write("multipart", "near-boundary", bytes([3]) + body([(component[0], b"\r\n--b0undar\r\n--b0undaryX")]))
    write("multipart", "truncated", bytes([64]) + body([component, model_part])[:90])
    write("multipart", "quoted-name", bytes([5]) + body([(b'Content-Disposition: form-data; name="a;b \\"c\\""', b"x")]))


def hostname_seeds():
    write("hostname", "same-tenant", "www.acme.test:443\nacme.test\nacme.test=acme\nwww.acme.test=acme\n")
    write("hostname", "misdirected", "beta.test\nacme.test\nacme.test=acme\nbeta.test=beta\n")
    write("hostname", "odd-spellings", "ACME.Test.:8443\n[::1]:443\nacme.test=acme\n")
    write("hostname", "no-host", "\nacme.test\n")


def config_seeds():
    write("config", "empty", "")
    write("config", "full", """data_dir = "corral-data"
listen = "127.0.0.1:8080"
plain_http = true
admin_listen = "127.0.0.1:9080"
max_upload_bytes = 2147483648
upload_min_bytes_per_sec = 16384
max_parallel_inference = 0
deploy_timeout_secs = 300
drain_timeout_secs = 30

[tls]
enabled = true
listen = "127.0.0.1:8443"
local_ca = true

[http]
header_read_timeout_ms = 10000
max_headers = 100
max_header_bytes = 16384

[onnx]
intra_op_threads = 1
execution_providers = ["cpu"]

[engine]
instances = 1000

[limits]
cpu_ms = 10000
tensor_rank = 8
""")
    write("config", "unknown-key", "[limits]\ncpu_msec = 5\n")


def tensor_seeds():
    write("tensor", "f32-image", bytes([2]) + (1).to_bytes(4, "little") + (3).to_bytes(4, "little")
          + (224).to_bytes(4, "little") + (224).to_bytes(4, "little"))
    write("tensor", "overflow", bytes([3]) + b"\xff\xff\xff\xff" * 4)
    write("tensor", "zero-dim", bytes([4]) + (0).to_bytes(4, "little") + b"\xff\xff\xff\xff")


def cert_seeds():
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = pathlib.Path(tmp) / "key.pem", pathlib.Path(tmp) / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=a.test",
                        "-addext", "subjectAltName=DNS:a.test,DNS:*.b.test"],
                       check=True, capture_output=True)
        pem, key_pem = cert.read_bytes(), key.read_bytes()
        der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
    write("certs", "chain-and-key", pem + b"\0" + key_pem)
    write("certs", "chain-only", pem)
    write("certs", "der", b"\x01" + der)


if __name__ == "__main__":
    if CORPUS.exists():
        for folder in CORPUS.iterdir():
            # Keep what fuzzing runs added; rewrite the named seeds.
            for seed in folder.iterdir():
                if len(seed.name) != 40:
                    seed.unlink()
    onnx_seeds()
    multipart_seeds()
    hostname_seeds()
    config_seeds()
    tensor_seeds()
    cert_seeds()
    print("seeds written to", CORPUS)
