//! WebSocket and other `Connection: upgrade` passthrough (docs/http.md,
//! "The upstream exchange"): the upgrade headers survive hop-by-hop removal, and after a 101
//! the two upgraded connections are joined byte for byte until either side closes. A tunnel
//! holds the instance's in-flight count (one request) and the worker's connection count, so
//! draining waits for it up to the deadline; it never looks at the route table again, so route,
//! backend and certificate changes do not touch it.

use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::Request;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tako_http1::server::{wants_upgrade, UpgradeSlot};
use tako_http1::upstream::Upgraded;

use crate::conns::ConnGuard;
use crate::counters::InFlight;

/// The `Upgrade` value when this is an HTTP/1.1 upgrade request.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if !wants_upgrade(req.version(), req.headers()) {
        return None;
    }
    req.headers().get(UPGRADE).cloned()
}

/// Where the client's side of an upgrade comes from.
pub enum ClientSide {
    /// HTTP/1 through our connection loop.
    Own(UpgradeSlot),
    Hyper(OnUpgrade),
}

impl ClientSide {
    pub fn of<B>(req: &mut Request<B>) -> Self {
        match req.extensions_mut().remove::<UpgradeSlot>() {
            Some(slot) => ClientSide::Own(slot),
            None => ClientSide::Hyper(hyper::upgrade::on(req)),
        }
    }
}

/// Puts back the two headers that hop-by-hop removal took.
pub fn restore_headers(headers: &mut HeaderMap, proto: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, proto.clone());
}

/// Joins the client and the instance until either closes.
pub async fn run(client: ClientSide, mut upstream: Upgraded, in_flight: InFlight, conn: ConnGuard) {
    let _held = (in_flight, conn);
    let result = match client {
        ClientSide::Own(slot) => match slot.take().await {
            Some(mut client) => tokio::io::copy_bidirectional(&mut client, &mut upstream).await,
            None => {
                tracing::debug!("Client side of the upgrade did not complete");
                return;
            }
        },
        ClientSide::Hyper(on) => match on.await {
            Ok(client) => {
                let mut client = TokioIo::new(client);
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            }
            Err(error) => {
                tracing::debug!(%error, "Client side of the upgrade did not complete");
                return;
            }
        },
    };
    match result {
        Ok((up, down)) => tracing::debug!(up, down, "Upgraded connection closed"),
        Err(error) => tracing::debug!(%error, "Upgraded connection ended with an error"),
    }
}
