//! The pipeline as the HTTP/1 connection loop (the http1 crate) calls it, with the worker's
//! limits (docs/limits.md).

use std::future::Future;
use std::sync::Arc;

use http::{Request, Response};
use tako_http1::server::{self as h1, HeadLimits, OwnBody, Refusal, Refused};
use tako_http1::LazyTimer;

use crate::access::AccessLog;
use crate::body::Body;
use crate::conn_info::ConnInfo;
use crate::forwarded;
use crate::limits::{
    BODY_IDLE, DRAIN_IDLE_GRACE, HEADER_READ_TIMEOUT, KEEP_ALIVE_IDLE, MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS, MAX_TARGET_LEN,
};
use crate::pipeline;
use crate::request_body::RequestBody;
use crate::responses::Canned;
use crate::shared::Shared;

pub static CONFIG: h1::Config = h1::Config {
    head: HeadLimits {
        max_fields: MAX_HEADER_FIELDS,
        max_bytes: MAX_HEADER_BYTES,
        max_target: MAX_TARGET_LEN,
    },
    header_read_timeout: HEADER_READ_TIMEOUT,
    keep_alive_idle: KEEP_ALIVE_IDLE,
    body_idle: BODY_IDLE,
    drain_grace: DRAIN_IDLE_GRACE,
    frequent_names: &forwarded::FREQUENT_NAMES,
};

/// One connection's way into the pipeline.
pub struct Pipeline {
    pub conn: ConnInfo,
    pub shared: Arc<Shared>,
    /// The upstream's response-head limit, kept from one request to the next.
    pub head_timer: LazyTimer,
}

impl From<Option<OwnBody>> for RequestBody {
    fn from(body: Option<OwnBody>) -> Self {
        body.map_or(RequestBody::Empty, RequestBody::Own)
    }
}

impl From<Refused> for Canned {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::BadRequest => Canned::BadRequest,
            Refused::UriTooLong => Canned::UriTooLong,
            Refused::HeaderFieldsTooLarge => Canned::HeaderFieldsTooLarge,
            Refused::RequestTimeout => Canned::RequestTimeout,
        }
    }
}

impl h1::Service for Pipeline {
    type RequestBody = RequestBody;
    type ResponseBody = Body;
    type Guard = AccessLog;

    fn call(
        &mut self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = (Response<Body>, AccessLog)> + Send + '_ {
        pipeline::answer(req, &self.conn, &self.shared, &mut self.head_timer)
    }

    /// Such a request has no headers to take an id from: it gets a made one (docs/http.md,
    /// "Request IDs").
    fn refusal(&mut self, refusal: Refusal) -> Vec<u8> {
        let Refusal(refused, head_request) = refusal;
        let canned = Canned::from(refused);
        let request_id =
            crate::request_id::generate(self.shared.config.index, std::time::Instant::now());
        tracing::debug!(
            peer = %self.conn.peer,
            status = refused.status().as_u16(),
            request_id = %request_id.to_str().unwrap_or(""),
            "Request refused before parsing"
        );
        canned.raw_close(head_request, &request_id)
    }

    /// A plain connection is closed by its close alone; TLS sends `close_notify` first.
    fn close_needs_shutdown(&self) -> bool {
        self.conn.tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_status() {
        for refused in [
            Refused::BadRequest,
            Refused::UriTooLong,
            Refused::HeaderFieldsTooLarge,
            Refused::RequestTimeout,
        ] {
            assert_eq!(Canned::from(refused).status(), refused.status());
        }
    }
}
