//! WebSocket and other `Connection: upgrade` passthrough (routing-and-proxy.md §11): the
//! upgrade headers survive hop-by-hop removal, and after a 101 the two upgraded connections
//! are joined byte for byte until either side closes. A tunnel holds the instance's
//! in-flight count (one request) and the worker's connection count, so draining waits for
//! it up to the deadline; it never looks at the route table again, so route, backend and
//! certificate changes do not touch it.

use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::counters::InFlight;
use crate::listeners::ConnGuard;
use crate::upstream::Upgraded;

/// The `Upgrade` value when this is an HTTP/1.1 upgrade request.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    req.headers()
        .get(UPGRADE)
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Puts back the two headers that hop-by-hop removal took.
pub fn restore_headers(headers: &mut HeaderMap, proto: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, proto.clone());
}

/// Joins the client and the instance until either closes.
pub async fn run(client: OnUpgrade, mut upstream: Upgraded, in_flight: InFlight, conn: ConnGuard) {
    let _held = (in_flight, conn);
    let client = match client.await {
        Ok(c) => c,
        Err(error) => {
            tracing::debug!(%error, "Client side of the upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(up, down, "Upgraded connection closed"),
        Err(error) => tracing::debug!(%error, "Upgraded connection ended with an error"),
    }
}
