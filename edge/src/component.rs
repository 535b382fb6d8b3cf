//! The Spin entry point: Spin's HTTP trigger, outbound HTTP and key-value store (or files, for
//! hosts without it) adapted to [`Edge`]. Everything it decides is the library's.
//!
//! Configuration: `origin` (the functions' base URL), `secret` (shared with the origin), `id`
//! (for the origin's logs) and `max_body_bytes`; Spin variables under Spin (`spin-kv`), else
//! the environment as `FERRY_EDGE_ORIGIN`, `FERRY_EDGE_SECRET`, `FERRY_EDGE_ID`,
//! `FERRY_EDGE_MAX_BODY_BYTES`.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Request, Response, send};
use spin_sdk::http_service;

use ferry_core::{ApiError, ErrorKind};

use crate::{Edge, EdgeConfig, EdgeError, EdgeJwt, Message, Origin, Step};

/// Where a scheduler (or a test) asks the edge to report its hits now.
const REPORT_PATH: &str = "/.well-known/ferry-edge/report";
/// Headers that belong to one connection, not to the message.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

type Body = Either<spin_sdk::wasip3::http_compat::IncomingResponseBody, Full<Bytes>>;

#[http_service]
async fn handle(request: Request) -> Result<Response<Body>, spin_sdk::http::Error> {
    let (config, origin) = match config().await {
        Ok(configured) => configured,
        Err(missing) => {
            return Ok(plain(
                500,
                &format!("the edge is not configured: {missing}"),
            ));
        }
    };
    let max_body_bytes = config.max_body_bytes;
    let secret = config.secret.clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let method = request.method().as_str().to_owned();
    let headers = headers_of(request.headers());
    // Read no more than the edge accepts: a larger body is refused, not buffered.
    let body = match Limited::new(request.into_body(), max_body_bytes.saturating_add(1))
        .collect()
        .await
    {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => {
            let error = ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("The request body is larger than {max_body_bytes} bytes."),
            )
            .with_code("request_too_large");
            return Ok(answer(crate::error_response(&error)));
        }
    };
    let message = Message {
        method,
        path,
        headers,
        body,
        ..Message::default()
    };
    // A store that cannot be opened only costs the cache.
    let Ok(store) = store::open().await else {
        return Ok(pass_through(origin.forward(&message).await));
    };
    let edge = Edge::new(config, store);
    if message.path == REPORT_PATH {
        return Ok(report_now(&edge, &origin, &message, &secret).await);
    }
    // Without randomness a hit could not get a unique id (and be billed): no cache then.
    let Some(hit_id) = random_id() else {
        return Ok(pass_through(origin.forward(&message).await));
    };
    let forward = match edge.handle(message, now_ms(), hit_id, &origin).await {
        Step::Answer(response) => return Ok(answer(response)),
        Step::Forward(forward) => forward,
    };
    let reply = origin.forward(&forward.request).await;
    let response = match reply {
        Ok(reply) if forward.may_keep() => {
            let (parts, body) = reply.into_parts();
            let message = Message {
                status: parts.status.as_u16(),
                headers: headers_of(&parts.headers),
                body: body.bytes().await?.to_vec(),
                ..Message::default()
            };
            edge.keep(&forward, &message, now_ms()).await;
            answer(message)
        }
        // Streams and everything else pass straight through.
        reply => pass_through(reply),
    };
    // The origin is reachable: hits waiting to be billed go to it once this answer is on its
    // way (the component keeps running after it returns).
    spin_sdk::wasip3::spawn(async move {
        let _ = edge.report_if_due(&origin).await;
    });
    Ok(response)
}

/// `POST /.well-known/ferry-edge/report`, signed like a report of no hits: send the waiting
/// hits now (for a scheduler). Anything else there is refused.
async fn report_now(
    edge: &Edge<store::Store>,
    origin: &SpinOrigin,
    request: &Message,
    secret: &[u8],
) -> Response<Body> {
    let signed = request
        .header(ferry_core::edge::SIGNATURE_HEADER)
        .is_some_and(|signature| ferry_core::edge::verify_report(secret, b"", signature));
    if request.method != "POST" || !signed {
        let error = ApiError::new(
            ErrorKind::Unauthenticated,
            "Reports are asked for with a POST signed with the edge secret.",
        )
        .with_code("invalid_signature");
        return answer(crate::error_response(&error));
    }
    match edge.report(origin).await {
        Ok(reported) => plain(200, &format!("{reported:?}")),
        Err(error) => plain(502, &error.to_string()),
    }
}

/// The origin's answer as it came, but for what only the edge may see.
fn pass_through(reply: Result<Response, spin_sdk::http::Error>) -> Response<Body> {
    match reply {
        Ok(reply) => {
            let mut reply = reply.map(Either::Left);
            reply.headers_mut().remove(ferry_core::edge::GRANT_HEADER);
            reply
        }
        Err(error) => unreachable_origin(&error),
    }
}

async fn config() -> Result<(EdgeConfig, SpinOrigin), &'static str> {
    let base = setting("origin").await.ok_or("origin is not set")?;
    let secret = setting("secret").await.ok_or("secret is not set")?;
    let config = EdgeConfig {
        secret: secret.into_bytes(),
        edge_id: setting("id").await.unwrap_or_else(|| "spin".into()),
        max_body_bytes: setting("max_body_bytes")
            .await
            .and_then(|bytes| bytes.parse().ok())
            .unwrap_or(1 << 20),
        jwt: match (
            setting("jwt_jwks_url").await,
            setting("jwt_issuer").await,
            setting("jwt_audience").await,
        ) {
            (Some(jwks_url), Some(issuer), Some(audience)) => {
                Some(EdgeJwt::new(jwks_url, issuer, audience))
            }
            _ => None,
        },
    };
    Ok((config, SpinOrigin { base }))
}

/// A Spin variable.
#[cfg(not(feature = "files-kv"))]
async fn setting(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .filter(|value| !value.is_empty())
}

/// An environment variable, `FERRY_EDGE_<NAME>`.
#[cfg(feature = "files-kv")]
async fn setting(name: &str) -> Option<String> {
    std::env::var(format!("FERRY_EDGE_{}", name.to_ascii_uppercase()))
        .ok()
        .filter(|value| !value.is_empty())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn random_id() -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).ok()?;
    Some(id)
}

fn headers_of(map: &spin_sdk::http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

fn answer(message: Message) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message.body))));
    *response.status_mut() = spin_sdk::http::StatusCode::from_u16(message.status)
        .unwrap_or(spin_sdk::http::StatusCode::BAD_GATEWAY);
    for (name, value) in message.headers {
        // A grant is for the edge, never for the caller.
        if name.eq_ignore_ascii_case(ferry_core::edge::GRANT_HEADER) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            spin_sdk::http::HeaderName::try_from(name),
            spin_sdk::http::HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn unreachable_origin(error: &spin_sdk::http::Error) -> Response<Body> {
    let error = ApiError::new(
        ErrorKind::UpstreamFailed,
        format!("The edge could not reach Ferry: {error}"),
    )
    .with_code("origin_unreachable")
    .retry_after(1);
    answer(crate::error_response(&error))
}

fn plain(status: u16, text: &str) -> Response<Body> {
    answer(Message {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: text.as_bytes().to_vec(),
        ..Message::default()
    })
}

/// The origin (and the identity provider) over Spin's outbound HTTP.
struct SpinOrigin {
    base: String,
}

impl SpinOrigin {
    async fn forward(&self, request: &Message) -> Result<Response, spin_sdk::http::Error> {
        send_to(&format!("{}{}", self.base, request.path), request).await
    }
}

async fn send_to(url: &str, request: &Message) -> Result<Response, spin_sdk::http::Error> {
    let mut outbound = Request::builder().method(request.method.as_str()).uri(url);
    for (name, value) in &request.headers {
        outbound = outbound.header(name, value);
    }
    let outbound = outbound.body(Full::new(Bytes::from(request.body.clone())))?;
    Ok(send(outbound).await?)
}

/// A reply read whole.
async fn collected(reply: Response) -> Result<Message, EdgeError> {
    let (parts, body) = reply.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|error| EdgeError::Origin(error.to_string()))?
        .to_bytes();
    Ok(Message {
        status: parts.status.as_u16(),
        headers: headers_of(&parts.headers),
        body: body.to_vec(),
        ..Message::default()
    })
}

impl Origin for SpinOrigin {
    async fn post(
        &self,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Message, EdgeError> {
        let request = Message {
            method: "POST".into(),
            path: path.into(),
            headers,
            body,
            ..Message::default()
        };
        let reply = self
            .forward(&request)
            .await
            .map_err(|error| EdgeError::Origin(error.to_string()))?;
        collected(reply).await
    }

    async fn fetch(&self, url: &str) -> Result<Message, EdgeError> {
        let request = Message {
            method: "GET".into(),
            ..Message::default()
        };
        let reply = send_to(url, &request)
            .await
            .map_err(|error| EdgeError::Origin(error.to_string()))?;
        collected(reply).await
    }
}

#[cfg(not(feature = "files-kv"))]
mod store {
    //! Spin's default key-value store.

    use spin_sdk::key_value::Store as SpinStore;

    use crate::{EdgeError, KeyValue};

    pub struct Store(SpinStore);

    pub async fn open() -> Result<Store, spin_sdk::http::Error> {
        SpinStore::open_default()
            .await
            .map(Store)
            .map_err(|error| spin_sdk::http::Error::other(error.to_string()))
    }

    fn failed(error: impl std::fmt::Display) -> EdgeError {
        EdgeError::Store(error.to_string())
    }

    impl KeyValue for Store {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EdgeError> {
            self.0.get(key).await.map_err(failed)
        }

        async fn set(&self, key: &str, value: &[u8]) -> Result<(), EdgeError> {
            self.0.set(key, value).await.map_err(failed)
        }

        async fn delete(&self, key: &str) -> Result<(), EdgeError> {
            self.0.delete(key).await.map_err(failed)
        }

        async fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, EdgeError> {
            let mut keys = self.0.get_keys().await.collect().await.map_err(failed)?;
            keys.retain(|key| key.starts_with(prefix));
            keys.sort();
            keys.truncate(limit);
            Ok(keys)
        }
    }
}

#[cfg(feature = "files-kv")]
mod store {
    //! Entries and hits as files in the preopened directory `/kv`, for hosts without Spin's
    //! key-value store. A key is its file's name in hex; a value is written to a temporary file
    //! and renamed, so a reader never sees half of one.

    use std::path::PathBuf;

    use crate::{EdgeError, KeyValue};

    const DIRECTORY: &str = "/kv";

    pub struct Store;

    pub async fn open() -> Result<Store, spin_sdk::http::Error> {
        Ok(Store)
    }

    fn path(key: &str) -> PathBuf {
        let name: String = key.bytes().map(|byte| format!("{byte:02x}")).collect();
        PathBuf::from(DIRECTORY).join(name)
    }

    fn key_of(name: &str) -> Option<String> {
        let bytes: Option<Vec<u8>> = (0..name.len() / 2)
            .map(|index| u8::from_str_radix(name.get(index * 2..index * 2 + 2)?, 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    }

    fn failed(error: std::io::Error) -> EdgeError {
        EdgeError::Store(error.to_string())
    }

    impl KeyValue for Store {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EdgeError> {
            match std::fs::read(path(key)) {
                Ok(value) => Ok(Some(value)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(failed(error)),
            }
        }

        async fn set(&self, key: &str, value: &[u8]) -> Result<(), EdgeError> {
            let target = path(key);
            let mut temporary = target.clone().into_os_string();
            let mut suffix = [0u8; 8];
            let _ = getrandom::fill(&mut suffix);
            temporary.push(format!(".tmp{}", u64::from_le_bytes(suffix)));
            std::fs::write(&temporary, value).map_err(failed)?;
            std::fs::rename(&temporary, &target).map_err(failed)
        }

        async fn delete(&self, key: &str) -> Result<(), EdgeError> {
            match std::fs::remove_file(path(key)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(failed(error)),
                _ => Ok(()),
            }
        }

        async fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, EdgeError> {
            let mut keys: Vec<String> = std::fs::read_dir(DIRECTORY)
                .map_err(failed)?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| !name.contains('.'))
                .filter_map(|name| key_of(&name))
                .filter(|key| key.starts_with(prefix))
                .collect();
            keys.sort();
            keys.truncate(limit);
            Ok(keys)
        }
    }
}
