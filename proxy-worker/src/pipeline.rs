//! One request through the pipeline (docs/http.md, "Pipeline"): limits, ACME, internal host,
//! redirect, route match, backend selection (with holds), proxy.

use std::sync::Arc;

use http::header::UPGRADE;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use tako_http1::upstream::{strip_hop_by_hop, Outgoing, UpstreamError};
use tako_http1::LazyTimer;
use tako_ipc::cidr::{any_contains, canonical_ip};
use tako_ipc::WorkerToMaster;

use crate::access::AccessLog;
use crate::body::{Body, Guarded};
use crate::cache;
use crate::compress;
use crate::conn_info::ConnInfo;
use crate::counters::UpstreamErrorKind;
use crate::forwarded;
use crate::hold::{self, HoldOutcome};
use crate::host::{self, RequestHost};
use crate::internal_host::{self, INTERNAL_HOST};
use crate::limits::{MAX_BODY_BYTES, MAX_TARGET_LEN};
use crate::redirect::{self, ACME_PREFIX};
use crate::request_body::{ReplayBody, ReplayState, RequestBody};
use crate::request_id;
use crate::responses::Canned;
use crate::shared::Shared;
use crate::static_files;
use crate::table::{AppEntry, Pick};
use crate::tunnel;

/// How many times one request may find its pick removed by a newer table. Each time it
/// picks from the table installed just before the removal, so a second time needs another
/// table swap in between; a bound keeps a storm of them from looping a request forever.
const MAX_REPICKS: u8 = 4;

/// Serves one request. Never fails: every problem is a response. The access log record stays
/// alive with the body, so its line is written when the last byte went out.
pub async fn handle(
    req: Request<RequestBody>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Response<Body> {
    let mut timer = LazyTimer::new();
    let (resp, log) = answer(req, &conn, &shared, &mut timer).await;
    resp.map(|b| Guarded::wrap(b, log))
}

/// Serves one request and hands back its access log record: the caller keeps it until the
/// response is written (the HTTP/1 loop does, without wrapping the body).
///
/// Not an `async fn`: those store every argument twice in their future, and this future is
/// part of every connection's. The request is held here once and lent to each stage.
#[allow(clippy::manual_async_fn)]
pub fn answer<'a>(
    mut req: Request<RequestBody>,
    conn: &'a ConnInfo,
    shared: &'a Shared,
    timer: &'a mut LazyTimer,
) -> impl std::future::Future<Output = (Response<Body>, AccessLog)> + 'a {
    async move {
        let mut log = AccessLog::start(&req, conn.peer, conn.tls);
        log.stats = Some(Arc::clone(&shared.counters));
        // docs/http.md, "Request IDs": set in the request for the app, on every answer.
        let trusted = || any_contains(&shared.trusted, canonical_ip(conn.peer.ip()));
        let (worker, at) = (shared.config.index, log.started());
        log.request_id = request_id::assign(req.headers_mut(), trusted, worker, at);
        let admitted = match shared.limiter.get() {
            Some(limiter) => limiter
                .request(conn, req.headers(), &shared.trusted, at)
                .map(|slot| log.client = slot),
            None => Ok(()),
        };
        let mut resp = match admitted {
            Ok(()) => route(&mut req, conn, shared, &mut log, timer).await,
            Err(refused) => refused.response(req.method() == Method::HEAD),
        };
        let id = log.request_id.clone();
        resp.headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), id);
        log.status = resp.status().as_u16();
        (resp, log)
    }
}

fn content_length(req: &Request<RequestBody>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

async fn route(
    req: &mut Request<RequestBody>,
    conn: &ConnInfo,
    shared: &Shared,
    log: &mut AccessLog,
    timer: &mut LazyTimer,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_TARGET_LEN {
        return Canned::UriTooLong.response(head);
    }
    // Smuggling pattern: the spec refuses the pair (the HTTP/1 head check already does; this
    // covers HTTP/2). Transfer-Encoding first: it is the one that is almost never there.
    if req.headers().contains_key(TRANSFER_ENCODING) && req.headers().contains_key(CONTENT_LENGTH) {
        return Canned::BadRequest.response(head);
    }
    let Some(host) = host::request_host(req) else {
        return Canned::BadRequest.response(head);
    };
    log.host = Some(host.clone());

    let path = req.uri().path();
    let acme = path.starts_with(ACME_PREFIX);
    if acme && shared.config.acme_enabled {
        let token = &path[ACME_PREFIX.len()..];
        return match shared.acme_tokens.load().get(token) {
            // The key authorization, byte for byte: the CA compares it exactly.
            Some(key_auth) => crate::responses::fixed(
                StatusCode::OK,
                "text/plain",
                "no-store",
                key_auth.clone(),
                head,
            ),
            None => Canned::TokenNotFound.response(head),
        };
    }

    let peer_ip = canonical_ip(conn.peer.ip());
    let trusted = any_contains(&shared.trusted, peer_ip);
    if host.hostname == INTERNAL_HOST {
        let status = shared.status.load_full();
        let metrics = shared.metrics.load_full();
        return internal_host::respond(
            path,
            head,
            peer_ip.is_loopback() || trusted,
            status.as_deref(),
            metrics.as_deref(),
            shared.uptime_secs(),
        );
    }

    let https = forwarded::effective_https(req.headers(), conn.tls, trusted, &host.hostname);
    log.https = https;
    if !https && !acme {
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = redirect::location(&host.hostname, shared.config.https_port, pq);
        return redirect::response(&location, head)
            .unwrap_or_else(|| Canned::BadRequest.response(head));
    }

    // The table is only borrowed for the match: no reference count taken on it, and the
    // route pattern copied only for the rare request that may be a static file.
    let (app, static_pattern) = {
        let table = shared.table.load();
        let Some((pattern, app)) = table.find(&host.hostname, path) else {
            return Canned::NotFound.response(head);
        };
        let candidate = !app.stopped && static_files::is_candidate(req.method(), path);
        (Arc::clone(app), candidate.then(|| pattern.clone()))
    };
    log.app = Some(Arc::clone(&app.name));

    // docs/http.md, "Compression": what the answer may be encoded with, for both stages.
    let accept = compress::request_accepts(shared.config.compression, req.method(), req.headers());

    // A file from the live release's public/ never reaches an instance (docs/http.md,
    // "Static files").
    // Boxed, like the hold below: a rare path's future would otherwise make every request's
    // future as large as its own. Dotfiles (`/.well-known/` aside) are never served from
    // `public/`: such a path goes to the app like any path without a file, so a probe for
    // `.env` or `.git/` gets the app's answer whether or not the release has one, and an
    // app that routes a dot path itself keeps working.
    if let Some(pattern) = static_pattern.filter(|_| !static_files::is_hidden(req.method(), path)) {
        let file = static_files::serve(
            req.method(),
            path,
            req.headers(),
            &accept,
            &pattern,
            &app.release_path,
        );
        if let Some(resp) = Box::pin(file).await {
            return resp;
        }
    }

    // A request without a body has no length to check.
    if !matches!(req.body(), RequestBody::Empty)
        && content_length(req).is_some_and(|n| n > MAX_BODY_BYTES)
    {
        return Canned::PayloadTooLarge.response(head);
    }

    // Cache stage (docs/http.md, "Response cache"): before backend selection, so a hit wakes
    // no instance.
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let lookup = shared.cache.lookup(
        req.method(),
        target,
        req.headers(),
        https,
        &host.received,
        &app.name,
    );
    let ticket = match lookup.await {
        cache::Lookup::Hit(resp) => {
            log.cache = "hit";
            return resp;
        }
        cache::Lookup::Forward(ticket) => ticket,
    };
    log.cache = ticket.log_label();

    let app = match admit(&app) {
        Admit::Serve => app,
        Admit::Hold => match held(Box::pin(hold(shared, &app.name)).await) {
            Ok(entry) => entry,
            Err(canned) => return canned.response(head),
        },
        Admit::Refuse(canned) => return canned.response(head),
    };

    let ctx = ProxyCtx {
        conn,
        trusted,
        https,
        host: &host,
    };
    match proxy(req, &app, &ctx, shared, log, timer).await {
        // Encoded before the cache sees it: the cache stores what it served.
        Proxied::Answer(resp, sent_at) => ticket.complete(compress::apply(resp, &accept), sent_at),
        Proxied::Own(resp) => resp,
    }
}

/// What an app's entry allows a request to do.
enum Admit {
    /// Pick one of its backends.
    Serve,
    /// Wait for an instance (one is starting, or the app sleeps on demand).
    Hold,
    Refuse(Canned),
}

fn admit(app: &AppEntry) -> Admit {
    if app.stopped {
        Admit::Refuse(Canned::NoHealthyBackend)
    } else if !app.backends.is_empty() {
        Admit::Serve
    } else if app.starting || app.on_demand {
        Admit::Hold
    } else {
        Admit::Refuse(Canned::NoHealthyBackend)
    }
}

fn held(outcome: HoldOutcome) -> Result<Arc<AppEntry>, Canned> {
    match outcome {
        HoldOutcome::Ready(entry) => Ok(entry),
        HoldOutcome::Failed => Err(Canned::AppFailedToStart),
        HoldOutcome::TimedOut => Err(Canned::StartupTimedOut),
        HoldOutcome::Full => Err(Canned::TooManyWaiting),
        HoldOutcome::Stopped => Err(Canned::NoHealthyBackend),
        HoldOutcome::Gone => Err(Canned::NotFound),
    }
}

/// Holds the request until `app` has an instance; asks the master to wake an app that sleeps
/// on demand.
async fn hold(shared: &Shared, app: &str) -> HoldOutcome {
    let wake = || {
        shared.send(WorkerToMaster::Wake {
            app: app.to_string(),
        })
    };
    hold::hold(&shared.holds, &shared.table, app, wake).await
}

/// The app's entry in the current table, for a request whose pick a newer table removed:
/// the same admission as a request that arrives now (an app stopped or deleted meanwhile
/// refuses it, an on-demand app that just went to sleep holds it).
async fn current_entry(shared: &Shared, name: &str) -> Result<Arc<AppEntry>, Canned> {
    let entry = shared.table.load().app(name).cloned();
    let Some(entry) = entry else {
        return Err(Canned::NoHealthyBackend);
    };
    match admit(&entry) {
        Admit::Serve => Ok(entry),
        Admit::Hold => held(hold(shared, name).await),
        Admit::Refuse(canned) => Err(canned),
    }
}

struct ProxyCtx<'a> {
    conn: &'a ConnInfo,
    trusted: bool,
    https: bool,
    host: &'a RequestHost,
}

/// What the proxy stage ends with.
enum Proxied {
    /// The instance's answer, for the cache to see, and when the request went out.
    Answer(Response<Body>, std::time::Instant),
    /// An answer of our own (an error, or a joined upgrade): never cached.
    Own(Response<Body>),
}

/// Sends the request to an instance of `app`, retrying once on another instance when the
/// connection could not be made.
async fn proxy(
    req: &mut Request<RequestBody>,
    app: &AppEntry,
    ctx: &ProxyCtx<'_>,
    shared: &Shared,
    log: &mut AccessLog,
    timer: &mut LazyTimer,
) -> Proxied {
    let head = req.method() == Method::HEAD;
    // An upgrade keeps `Connection: upgrade` and `Upgrade`; on 101 the bytes are copied.
    let upgrade = tunnel::requested(req);
    let mut client_upgrade = upgrade.is_some().then(|| tunnel::ClientSide::of(req));
    // Taken, not moved out with the rest of the request: it stays where it is, lent.
    let mut headers = std::mem::take(req.headers_mut());
    let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        tunnel::restore_headers(&mut headers, proto);
    }
    // `Host` upstream is the host the request was routed by, the one its cache key names.
    if forwarded::apply(
        &mut headers,
        ctx.conn,
        ctx.trusted,
        ctx.https,
        &ctx.host.received,
    )
    .is_err()
    {
        return Proxied::Own(Canned::BadRequest.response(head));
    }
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // Only a body needs the hand-over state; most requests have none.
    let replay = match body {
        RequestBody::Empty => None,
        body => Some(ReplayState::new(Some(body))),
    };
    let mut exclude = None;
    // The current table's entry, once a newer table removed what `app` offered.
    let mut fresh: Option<Arc<AppEntry>> = None;
    let mut repicks = 0u8;
    loop {
        let entry: &AppEntry = fresh.as_deref().unwrap_or(app);
        let (backend, mut in_flight) = match entry.pick(exclude, &shared.counters) {
            Pick::Backend(backend, in_flight) => (backend, in_flight),
            Pick::None => {
                return Proxied::Own(if exclude.is_some() {
                    Canned::BadGateway.response(head)
                } else {
                    Canned::NoHealthyBackend.response(head)
                });
            }
            Pick::Superseded => {
                repicks += 1;
                if repicks > MAX_REPICKS {
                    return Proxied::Own(Canned::BadGateway.response(head));
                }
                // Rare: boxed, so the hold in it does not grow every request's future.
                match Box::pin(current_entry(shared, &app.name)).await {
                    Ok(current) => fresh = Some(current),
                    Err(canned) => return Proxied::Own(canned.response(head)),
                }
                continue;
            }
        };
        log.instance = Some(backend.instance_id);
        let outgoing = Outgoing {
            method: req.method(),
            target,
            headers: &headers,
            body: ReplayBody::new(replay.clone(), MAX_BODY_BYTES),
        };
        let sent_at = std::time::Instant::now();
        match shared
            .upstream
            .send(backend.port, outgoing, sent_at, timer)
            .await
        {
            Ok(resp) => {
                in_flight.count();
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // Only an upgrade the client asked for is joined; anything else is the
                    // instance breaking HTTP.
                    let Some(client) = client_upgrade.take() else {
                        tracing::warn!(app = %app.name, instance = backend.instance_id, "Instance answered 101 to a request without Upgrade");
                        return Proxied::Own(Canned::BadGateway.response(head));
                    };
                    let proto = resp.headers().get(UPGRADE).cloned();
                    let (mut rparts, rbody) = resp.into_parts();
                    let Some(upstream_side) = rbody.into_upgraded() else {
                        return Proxied::Own(Canned::BadGateway.response(head));
                    };
                    strip_hop_by_hop(&mut rparts.headers);
                    if let Some(proto) = proto {
                        tunnel::restore_headers(&mut rparts.headers, &proto);
                    }
                    let conn = shared.conns.enter();
                    tokio::spawn(tunnel::run(client, upstream_side, in_flight, conn));
                    return Proxied::Own(Response::from_parts(rparts, crate::responses::empty()));
                }
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                let resp = Response::from_parts(rparts, Guarded::wrap(rbody, in_flight));
                return Proxied::Answer(resp, sent_at);
            }
            Err(UpstreamError::Connect(error)) => {
                shared
                    .counters
                    .record_upstream_error(&app.name, UpstreamErrorKind::Connect);
                let untouched = replay.as_ref().is_none_or(|r| r.untouched());
                tracing::warn!(
                    app = %app.name,
                    instance = backend.instance_id,
                    port = backend.port,
                    %error,
                    "Upstream connect failed"
                );
                if exclude.is_none() && untouched && entry.backends.len() > 1 {
                    exclude = Some(backend.instance_id);
                    continue;
                }
                return Proxied::Own(Canned::BadGateway.response(head));
            }
            Err(UpstreamError::Timeout) => {
                in_flight.count();
                shared
                    .counters
                    .record_upstream_error(&app.name, UpstreamErrorKind::Timeout);
                tracing::warn!(app = %app.name, instance = backend.instance_id, "Upstream response timed out");
                return Proxied::Own(Canned::GatewayTimeout.response(head));
            }
            Err(error @ UpstreamError::Failed(_)) => {
                in_flight.count();
                if replay.as_ref().is_some_and(|r| r.too_large()) {
                    return Proxied::Own(Canned::PayloadTooLarge.response(head));
                }
                if replay.as_ref().is_some_and(|r| r.client_failed()) {
                    // Malformed chunking or a body cut short: the client's fault.
                    tracing::debug!(app = %app.name, %error, "Request body unreadable");
                    return Proxied::Own(Canned::BadRequest.response(head));
                }
                shared
                    .counters
                    .record_upstream_error(&app.name, UpstreamErrorKind::Failed);
                tracing::warn!(app = %app.name, instance = backend.instance_id, %error, "Upstream request failed");
                return Proxied::Own(Canned::BadGateway.response(head));
            }
        }
    }
}
