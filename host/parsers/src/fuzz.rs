//! The fuzz targets' bodies. Each takes arbitrary bytes, runs one parser on them, and asserts
//! what must hold of anything that parser accepts; a panic is a finding. `fuzz/fuzz_targets/`
//! calls these under libFuzzer, and `tests/corpus.rs` replays the committed corpora through
//! them as ordinary tests on the stable toolchain.

mod onnx_proto;

use crate::multipart::{self, Bounds, Event, Parser};
use crate::tensor::{self, ElementType};

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus folder.
pub const TARGETS: &[(&str, Body)] = &[
    ("onnx_check", onnx_check),
    ("multipart", multipart),
    ("hostname", hostname),
    ("config", config),
    ("tensor", tensor),
    ("certs", certs),
];

/// The self-contained check: a model it accepts holds no tensor that points outside the file,
/// as a decoder independent of the check (prost, over the schema's tensor-holding fields)
/// reads it.
pub fn onnx_check(data: &[u8]) {
    if crate::onnx::check_self_contained(data).is_err() {
        return;
    }
    // A protobuf the check accepts that prost cannot decode (e.g. a string field that is
    // not UTF-8 where prost wants one) holds nothing prost could read a reference from.
    if let Ok(model) = <onnx_proto::ModelProto as prost::Message>::decode(data) {
        let external = onnx_proto::external_tensor(&model);
        assert!(
            external.is_none(),
            "the check accepted a model whose tensor {external:?} points outside the file"
        );
    }
}

/// The upload parser: the first byte picks a chunk size; the same body fed in those chunks
/// and whole gives the same parts (or fails both ways), data never comes outside a part, and
/// the parser never holds more than a part header's bound plus one chunk.
pub fn multipart(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let bounds = Bounds {
        max_head_bytes: 256,
        max_parts: 8,
        max_preamble_bytes: 256,
    };
    let chunked = parse_multipart(body, usize::from(step).max(1), bounds);
    let whole = parse_multipart(body, body.len().max(1), bounds);
    assert_eq!(
        chunked.is_ok(),
        whole.is_ok(),
        "chunks of {step}: {chunked:?}, whole: {whole:?}"
    );
    if let (Ok(chunked), Ok(whole)) = (&chunked, &whole) {
        assert_eq!(chunked, whole, "chunks of {step}");
        assert!(chunked.len() <= bounds.max_parts);
        let data: usize = chunked.iter().map(|(_, _, bytes)| bytes.len()).sum();
        assert!(data <= body.len());
    }
}

type Parts = Vec<(String, Option<String>, Vec<u8>)>;

fn parse_multipart(body: &[u8], step: usize, bounds: Bounds) -> Result<Parts, multipart::Error> {
    let mut parser = Parser::new("b0undary", bounds);
    let mut parts: Parts = Vec::new();
    let mut chunks = body.chunks(step);
    loop {
        let chunk = chunks.next();
        match chunk {
            Some(chunk) => parser.push(chunk),
            None => parser.finish(),
        }
        while let Some(event) = parser.next_event()? {
            match event {
                Event::Part(head) => {
                    assert!(head.name.len() <= bounds.max_head_bytes);
                    parts.push((head.name, head.file_name, Vec::new()));
                }
                Event::Data(bytes) => {
                    assert!(!bytes.is_empty(), "an empty data event");
                    parts
                        .last_mut()
                        .expect("data outside a part")
                        .2
                        .extend_from_slice(&bytes);
                }
                Event::End => return Ok(parts),
            }
        }
        let held = parser.buffered();
        assert!(
            held <= bounds.max_head_bytes.max(bounds.max_preamble_bytes) + 4 + step,
            "the parser holds {held} bytes"
        );
        if chunk.is_none() {
            panic!("an ended body neither completed nor failed");
        }
    }
}

/// Host names and routing: the input is lines `host`, `sni`, then names `name=tenant` a
/// table routes. Normalizing is idempotent and yields a plain DNS name; a request is routed
/// by its own normalized host, never across tenants from its connection's SNI.
pub fn hostname(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let host = lines.next().filter(|h| !h.is_empty());
    let sni = lines.next().filter(|s| !s.is_empty());
    let table: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, tenant) = line.split_once('=')?;
            Some((crate::hostname::normalize_host(name)?, tenant.to_owned()))
        })
        .collect();
    let tenant_of = |name: &str| {
        table
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, tenant)| tenant.clone())
    };
    for name in [host, sni].into_iter().flatten() {
        if let Some(normal) = crate::hostname::normalize_host(name) {
            assert_eq!(
                crate::hostname::normalize_host(&normal).as_deref(),
                Some(normal.as_str()),
                "normalizing is idempotent"
            );
            assert!(normal.len() <= 253);
            assert!(
                normal.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
                "{normal:?}"
            );
            assert!(crate::hostname::same_host(name, &normal));
        }
    }
    match crate::hostname::routed_name(host, sni, tenant_of) {
        Ok(name) => {
            assert_eq!(
                Some(&name),
                host.and_then(crate::hostname::normalize_host).as_ref()
            );
            if let Some(sni) = sni.and_then(crate::hostname::normalize_host) {
                assert_eq!(tenant_of(&sni), tenant_of(&name), "routed across tenants");
            }
        }
        Err(crate::hostname::Unroutable::BadHost) => {
            assert!(host.and_then(crate::hostname::normalize_host).is_none());
        }
        Err(crate::hostname::Unroutable::Misdirected {
            sni,
            host,
            host_tenant,
        }) => {
            assert_ne!(sni, host);
            assert_ne!(tenant_of(&sni), host_tenant);
        }
    }
}

/// The configuration: any text either parses into a configuration that passes its own checks
/// and survives a round trip through `corral config check`'s output, or is refused.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::parse(text, Vec::new()) else {
        return;
    };
    let mut shown = config.clone();
    shown.admin_token = None;
    let again = crate::config::Config::parse(&shown.to_toml(), Vec::new())
        .unwrap_or_else(|e| panic!("`config check` output does not parse: {e:#}"));
    assert_eq!(again, shown, "the configuration changed in a round trip");
}

/// Tensor shapes: the byte length and element count of any shape are exactly the products
/// (computed here in 128 bits), or `None` when they, or a product of leading dimensions, do
/// not fit.
pub fn tensor(data: &[u8]) {
    let Some((&ty, dims)) = data.split_first() else {
        return;
    };
    let ty = ElementType::ALL[usize::from(ty) % ElementType::ALL.len()];
    let shape: Vec<u32> = dims
        .chunks(4)
        .take(16)
        .map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(word)
        })
        .collect();
    // A prefix product is checked against its bound (at most 2^64) before the next factor
    // (below 2^32) multiplies it, so it never leaves 128 bits.
    let prefixes = |start: u128, bound: u128| {
        shape.iter().try_fold(start, |n, &dim| {
            let next = n * u128::from(dim);
            (next <= bound).then_some(next)
        })
    };
    let elements = prefixes(1, u128::from(u64::MAX)).map(|n| n as u64);
    assert_eq!(tensor::element_count(&shape), elements, "{shape:?}");
    let bytes = prefixes(ty.size() as u128, usize::MAX as u128).map(|n| n as usize);
    assert_eq!(tensor::byte_len(&shape, ty), bytes, "{shape:?} of {ty:?}");
}

/// Certificates: the input is a PEM chain and a PEM key separated by a NUL byte (or, when it
/// starts with `0x01`, raw DER wrapped as one PEM certificate). Parsing never panics, and a
/// certificate it accepts has a SHA-256 and names its validity in order.
pub fn certs(data: &[u8]) {
    let (chain, key) = match data.split_first() {
        Some((1, der)) => (pem("CERTIFICATE", der), String::new()),
        _ => {
            let text = String::from_utf8_lossy(data);
            let (chain, key) = text.split_once('\0').unwrap_or((&text, ""));
            (chain.to_owned(), key.to_owned())
        }
    };
    if let Ok(certificate) = crate::certs::parse(&chain, &key) {
        assert_eq!(certificate.info.sha256.len(), "sha256:".len() + 64);
        let _ = crate::certs::check_usable(
            &certificate,
            &["a.test".to_owned(), "*.b.test".to_owned()],
            certificate.info.not_before,
        );
    }
}

/// `der` as a PEM block with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |w, (i, &b)| w | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                body.push(char::from(ALPHABET[(word >> (18 - 6 * i) & 63) as usize]));
            } else {
                body.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_armour_round_trips_through_rustls() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        for len in 0..8 {
            let der: Vec<u8> = (0..len).map(|i| i as u8 * 37).collect();
            let text = super::pem("CERTIFICATE", &der);
            if der.is_empty() {
                continue;
            }
            let parsed = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
            assert_eq!(parsed.as_ref(), der.as_slice(), "{text}");
        }
    }
}
