use super::*;

/// Parts as (name, file name, data).
type Parts = Vec<(String, Option<String>, Vec<u8>)>;

/// Parses `body` fed in chunks of `step` bytes.
fn parse(body: &[u8], step: usize, bounds: Bounds) -> Result<Parts, Error> {
    let mut parser = Parser::new("XyZ", bounds);
    let mut parts: Parts = Vec::new();
    let mut chunks = body.chunks(step.max(1)).peekable();
    loop {
        match chunks.next() {
            Some(chunk) => parser.push(chunk),
            None => parser.finish(),
        }
        while let Some(event) = parser.next_event()? {
            match event {
                Event::Part(head) => parts.push((head.name, head.file_name, Vec::new())),
                Event::Data(data) => {
                    assert!(!data.is_empty());
                    parts
                        .last_mut()
                        .expect("data inside a part")
                        .2
                        .extend(&data);
                }
                Event::End => return Ok(parts),
            }
        }
        if chunks.peek().is_none() && parser.ended {
            unreachable!("an ended parser either ends or fails");
        }
    }
}

fn body() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"component\"; ");
    body.extend_from_slice(
        b"filename=\"a;b \\\"c\\\".wasm\"\r\nContent-Type: application/wasm\r\n\r\n",
    );
    // Data that nearly holds the boundary, at every place a chunk can cut it.
    body.extend_from_slice(b"\0asm\r\n--XyX\r\n--Xy\r\n-");
    body.extend_from_slice(
        b"\r\n--XyZ  \r\ncontent-disposition: FORM-DATA; name=format.add\r\n\r\n",
    );
    body.extend_from_slice(b"onnx");
    body.extend_from_slice(b"\r\n--XyZ--\r\nepilogue, ignored");
    body
}

#[test]
fn parts_come_out_the_same_however_the_body_is_cut() {
    let expected = vec![
        (
            "component".to_owned(),
            Some("a;b \"c\".wasm".to_owned()),
            b"\0asm\r\n--XyX\r\n--Xy\r\n-".to_vec(),
        ),
        ("format.add".to_owned(), None, b"onnx".to_vec()),
    ];
    let body = body();
    for step in 1..=body.len() {
        assert_eq!(
            parse(&body, step, Bounds::default()).unwrap(),
            expected,
            "chunks of {step}"
        );
    }
    let mut with_preamble = b"a preamble\r\n".to_vec();
    with_preamble.extend(&body);
    assert_eq!(
        parse(&with_preamble, 7, Bounds::default()).unwrap(),
        expected
    );
}

#[test]
fn a_body_cut_short_is_an_error_wherever_it_is_cut() {
    let body = body();
    let end = body.len() - b"--\r\nepilogue, ignored".len();
    for cut in 0..end {
        assert_eq!(
            parse(&body[..cut], 5, Bounds::default()),
            Err(Error::Truncated),
            "cut at {cut}"
        );
    }
}

#[test]
fn an_endless_part_head_is_refused_once_it_passes_the_limit() {
    let mut parser = Parser::new("XyZ", Bounds::default());
    parser.push(b"--XyZ\r\nContent-Disposition: form-data; name=\"a");
    assert_eq!(parser.next_event(), Ok(None));
    let chunk = vec![b'a'; 1024];
    let mut pushed = 0;
    let error = loop {
        parser.push(&chunk);
        pushed += chunk.len();
        match parser.next_event() {
            Ok(None) => assert!(pushed < 16 * 1024, "still buffering after {pushed} bytes"),
            other => break other,
        }
    };
    assert_eq!(error, Err(Error::HeadTooLong { limit: 8 * 1024 }));
}

#[test]
fn parts_and_preamble_are_bounded() {
    let part = b"\r\n--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\ndata";
    let bounds = Bounds {
        max_parts: 3,
        ..Bounds::default()
    };
    let mut body = Vec::new();
    for _ in 0..3 {
        body.extend_from_slice(part);
    }
    body.extend_from_slice(b"\r\n--XyZ--");
    assert_eq!(parse(&body, 64, bounds).unwrap().len(), 3);
    let mut body = Vec::new();
    for _ in 0..4 {
        body.extend_from_slice(part);
    }
    body.extend_from_slice(b"\r\n--XyZ--");
    assert_eq!(
        parse(&body, 64, bounds),
        Err(Error::TooManyParts { limit: 3 })
    );

    let mut body = vec![b'p'; 9 * 1024];
    body.extend_from_slice(part);
    assert_eq!(
        parse(&body, 100, Bounds::default()),
        Err(Error::PreambleTooLong { limit: 8 * 1024 })
    );
}

#[test]
fn malformed_heads_are_refused_with_the_reason() {
    let cases: [(&[u8], &str); 6] = [
        (b"--XyZ\r\n\r\n", "no Content-Disposition"),
        (
            b"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\n",
            "not form-data",
        ),
        (
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\n",
            "no name",
        ),
        (
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\n",
            "unterminated",
        ),
        (b"--XyZ\r\nno colon here\r\n\r\n", "no ':'"),
        (b"--XyZjunk\r\n", "line break"),
    ];
    for (body, reason) in cases {
        match parse(body, 3, Bounds::default()) {
            Err(Error::BadHead(why)) => assert!(why.contains(reason), "{why}"),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn boundaries_are_read_from_the_content_type() {
    assert_eq!(
        boundary("multipart/form-data; boundary=abc").as_deref(),
        Some("abc")
    );
    assert_eq!(
        boundary("Multipart/Form-Data ; charset=utf-8; Boundary=\"a b;c\"").as_deref(),
        Some("a b;c")
    );
    let long = "b".repeat(200);
    assert_eq!(
        boundary(&format!("multipart/form-data; boundary={long}")).as_deref(),
        Some(long.as_str())
    );
    for refused in [
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=abc",
        &format!("multipart/form-data; boundary={}", "b".repeat(201)),
    ] {
        assert_eq!(boundary(refused), None, "{refused}");
    }
}
