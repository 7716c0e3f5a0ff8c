//! One error vocabulary: every code a client of Corral can receive, with its HTTP status and
//! what it means. The data plane, the admin API and the CLI all speak it; `docs/errors.md` is
//! checked against it by a test, so the published list never drifts from the code.
//!
//! An error answered by Corral itself is always `{"error":{"code":"...","message":"..."}}`:
//! the code is one of [`ErrorCode`], the message says what the client can act on.

use std::fmt;

use http::StatusCode;

/// Where a code is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Requests to tenants' services (the data-plane listeners).
    Request,
    /// The admin API (tenants, deployments, certificates).
    Admin,
}

macro_rules! error_codes {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = ($code:literal, $status:ident, $plane:ident, $meaning:literal),
    )*) => {
        /// An error code a client can receive: its string, HTTP status and meaning.
        #[non_exhaustive]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                $(#[doc = $doc])*
                #[doc = concat!("`", $code, "` (", stringify!($status), "): ", $meaning, ".")]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order `docs/errors.md` lists them.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as clients see it (`"overloaded"`).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)* }
            }

            /// Where it is answered.
            pub fn plane(self) -> Plane {
                match self { $(Self::$variant => Plane::$plane,)* }
            }

            /// One line: what happened and what the client can do.
            pub fn meaning(self) -> &'static str {
                match self { $(Self::$variant => $meaning,)* }
            }
        }
    };
}

error_codes! {
    // The request path.
    BadRequest = ("bad_request", BAD_REQUEST, Request,
        "the request is malformed: no host name, a Host that is not ASCII, an unreadable body or a bad admin route parameter"),
    UnknownHost = ("unknown_host", NOT_FOUND, Request,
        "no tenant serves the request's host name"),
    MisdirectedRequest = ("misdirected_request", MISDIRECTED_REQUEST, Request,
        "the connection's TLS server name belongs to another tenant than the request's host: open a new connection"),
    HeadersTooLarge = ("headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE, Request,
        "the request head has more header fields or bytes than the server allows"),
    RequestTooLarge = ("request_too_large", PAYLOAD_TOO_LARGE, Request,
        "the request body is larger than the tenant's request_body_bytes"),
    NoActiveDeployment = ("no_active_deployment", SERVICE_UNAVAILABLE, Request,
        "the tenant exists but has no active deployment"),
    DeploymentUnavailable = ("deployment_unavailable", SERVICE_UNAVAILABLE, Request,
        "the tenant's deployment is being restored after a restart (Retry-After), or could not be (its status says why)"),
    Overloaded = ("overloaded", SERVICE_UNAVAILABLE, Request,
        "the tenant has as many requests, or queued inference runs, as its limits allow: retry after Retry-After"),
    Timeout = ("timeout", GATEWAY_TIMEOUT, Request,
        "the component did not answer within the tenant's timeout_ms"),
    ComponentError = ("component_error", BAD_GATEWAY, Request,
        "the component answered with a wasi:http error code instead of a response"),
    ComponentFailed = ("component_failed", INTERNAL_SERVER_ERROR, Request,
        "the component returned without answering"),
    ComponentTrapped = ("component_trapped", INTERNAL_SERVER_ERROR, Request,
        "the component trapped (a bug in it); the message names the trap"),
    MemoryLimit = ("memory_limit", INTERNAL_SERVER_ERROR, Request,
        "the component went past the tenant's memory_bytes (or its table limits)"),
    InstanceLimit = ("instance_limit", INTERNAL_SERVER_ERROR, Request,
        "the component went past the tenant's instances"),
    CpuTimeLimit = ("cpu_time_limit", INTERNAL_SERVER_ERROR, Request,
        "the component used more than the tenant's cpu_ms of CPU time"),
    NnLimit = ("nn_limit", INTERNAL_SERVER_ERROR, Request,
        "the component went past a wasi:nn limit (calls, bytes, live resources or tensor rank per request)"),

    // The admin API.
    Unauthorized = ("unauthorized", UNAUTHORIZED, Admin,
        "the route needs 'Authorization: Bearer TOKEN' with a valid operator or tenant token"),
    Forbidden = ("forbidden", FORBIDDEN, Admin,
        "the token may not do that (a tenant token on an operator route or on another tenant)"),
    NotFound = ("not_found", NOT_FOUND, Admin,
        "no such route, tenant, version or certificate"),
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED, Admin,
        "the route does not take that method"),
    Conflict = ("conflict", CONFLICT, Admin,
        "the change conflicts with the current state: a host name owned by another tenant, the active version, a tenant deleted meanwhile"),
    BodyTimeout = ("body_timeout", REQUEST_TIMEOUT, Admin,
        "a JSON body did not arrive within header_read_timeout_ms"),
    BodyTooLarge = ("body_too_large", PAYLOAD_TOO_LARGE, Admin,
        "a JSON body is larger than 64 KiB"),
    InvalidJson = ("invalid_json", BAD_REQUEST, Admin,
        "the JSON body does not parse, or has a field the route does not take"),
    InvalidTenant = ("invalid_tenant", BAD_REQUEST, Admin,
        "the tenant name is not 1 to 63 characters from a-z, 0-9 and '-'"),
    InvalidHost = ("invalid_host", BAD_REQUEST, Admin,
        "a host name is not a valid DNS name"),
    InvalidOutgoingHost = ("invalid_outgoing_host", BAD_REQUEST, Admin,
        "an outgoing_hosts entry is not a host name or host:port"),
    InvalidLimits = ("invalid_limits", BAD_REQUEST, Admin,
        "a limit is unknown, zero, or beyond what the server allows"),
    InvalidCertificate = ("invalid_certificate", BAD_REQUEST, Admin,
        "the certificate does not parse, does not match its key, is not valid now or does not cover the tenant's host names"),
    CertificateMismatch = ("certificate_mismatch", BAD_REQUEST, Admin,
        "new host names are not covered by the tenant's own certificate: upload one that covers them first"),
    UploadTooLarge = ("upload_too_large", PAYLOAD_TOO_LARGE, Admin,
        "the upload is larger than max_upload_bytes"),
    UploadTooSlow = ("upload_too_slow", REQUEST_TIMEOUT, Admin,
        "the upload carried less than upload_min_bytes_per_sec over 10 s"),
    MissingComponent = ("missing_component", BAD_REQUEST, Admin,
        "the upload has no 'component' part and no model for the built-in inference component, or this server lacks that component"),
    InvalidComponent = ("invalid_component", BAD_REQUEST, Admin,
        "the component does not compile (not a WebAssembly component, or invalid)"),
    UnsatisfiedImport = ("unsatisfied_import", BAD_REQUEST, Admin,
        "the component imports something Corral does not provide"),
    MissingExport = ("missing_export", BAD_REQUEST, Admin,
        "the component does not export wasi:http/incoming-handler"),
    InvalidModelName = ("invalid_model_name", BAD_REQUEST, Admin,
        "a model name is not 1 to 128 characters from A-Z, a-z, 0-9, '-', '_' and '.'"),
    UnknownFormat = ("unknown_format", BAD_REQUEST, Admin,
        "a model's format is neither given nor known from its file name (.onnx, .pt)"),
    InvalidModel = ("invalid_model", BAD_REQUEST, Admin,
        "a model does not load in its backend"),
    ExternalData = ("external_data", BAD_REQUEST, Admin,
        "an ONNX model refers to files outside itself (external data), which Corral never reads"),
    ModelTooLarge = ("model_too_large", BAD_REQUEST, Admin,
        "a model needs more memory loaded than the server's whole model memory budget"),
    InvalidConfig = ("invalid_config", BAD_REQUEST, Admin,
        "the upload's 'config' part is not a valid deployment config for its models"),
    DeployTimeout = ("deploy_timeout", BAD_REQUEST, Admin,
        "compiling the component and loading its models took longer than deploy_timeout_secs"),
    UntrustedModel = ("untrusted_model", FORBIDDEN, Admin,
        "a TorchScript model (which runs as code) for a tenant the operator has not trusted"),
    DeploysBusy = ("deploys_busy", SERVICE_UNAVAILABLE, Admin,
        "the server is validating as many uploads as it may (concurrent_deploys): retry after Retry-After"),
    ModelsBusy = ("models_busy", SERVICE_UNAVAILABLE, Admin,
        "models in use hold the model memory budget, so a model cannot load now: retry after Retry-After"),
    StorageQuotaExceeded = ("storage_quota_exceeded", INSUFFICIENT_STORAGE, Admin,
        "the tenant's stored deployments would take more than its storage_bytes"),
    ModelQuotaExceeded = ("model_quota_exceeded", INSUFFICIENT_STORAGE, Admin,
        "the deployment's models measure more memory loaded than the tenant's model_bytes"),
    Internal = ("internal", INTERNAL_SERVER_ERROR, Admin,
        "the server failed (I/O, a bug); its log says why"),
}

impl ErrorCode {
    /// Seconds a client should wait before retrying (`Retry-After`), for a code that passes.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Self::Overloaded | Self::DeploymentUnavailable => Some(1),
            Self::DeploysBusy | Self::ModelsBusy => Some(5),
            _ => None,
        }
    }

    /// The code named `code`, if Corral has one.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request refused with a code the client can act on, or Corral's own failure (answered as
/// `500 internal`, the cause logged and never shown). The admin API and the control plane
/// (`tenancy`) answer with it; `http::error::refusal_response` is the one place it becomes a
/// response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// Refused: `code` says why, `message` names what is at fault.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// Corral itself failed (I/O, a host bug).
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `409 conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The code the client gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Refused { code, .. } => *code,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The tables of `docs/errors.md`, one per [`Plane`], as the enum has them.
pub fn markdown_tables() -> String {
    let mut out = String::new();
    for (plane, title) in [
        (Plane::Request, "Requests to a tenant's service"),
        (Plane::Admin, "The admin API"),
    ] {
        out.push_str(&format!(
            "## {title}\n\n| code | status | meaning |\n|---|---|---|\n"
        ));
        for code in ErrorCode::ALL.iter().filter(|c| c.plane() == plane) {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                code.as_str(),
                code.status().as_u16(),
                code.meaning()
            ));
        }
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} is listed twice");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    /// `docs/errors.md` lists exactly the codes above, with their statuses and meanings.
    #[test]
    fn the_published_list_is_the_enum() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md");
        let doc = std::fs::read_to_string(path).expect("docs/errors.md");
        let tables = markdown_tables();
        assert!(
            doc.contains(&tables),
            "docs/errors.md is out of date: replace its tables with\n\n{tables}"
        );
    }
}
