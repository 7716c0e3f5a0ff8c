//! The smallest useful service: `200 hello, world` for any request. It imports nothing but
//! `wasi:http` and the WASI it needs, so the same component runs on Corral and on
//! `wasmtime serve`, which is what `cargo xtask bench` compares.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::new(Body::from("hello, world\n")))
}
