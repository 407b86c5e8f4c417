//! WebSocket through the proxy door (`eth_subscribe` and friends).
//!
//! - At the upgrade the token is checked (tenant, signature, claims, Origin,
//!   User-Agent): a refusal for the token is 401, for the tenant, origin or
//!   user agent 403, no decision 503, all before the node is contacted. A
//!   token whose policy only limits methods or addresses passes here: those
//!   are checked per call.
//! - Each client message is parsed as JSON-RPC; every call is checked with
//!   the same token. Allowed calls go to the node (a batch's allowed calls as
//!   one array); refused and invalid ones are answered by the gateway at once
//!   (for a batch, as one array message of their own, ahead of the node's).
//! - Node messages (answers, subscription notifications) go to the client as
//!   they are.
//! - At the token's `exp` the gateway closes the socket (1008, "token
//!   expired"), and the node connection with it.
//! - The gateway pings the client every 30 s; a client silent (no frame, no
//!   pong) for 90 s is closed (1001). At the drain every socket is closed
//!   (1001, "going away"). Open sockets count against `max_connections`,
//!   shared per address (`SlotRule::Share`; a socket closed to make room
//!   gets 1013).

use crate::gate::{CallFacts, Class, Door, Facts, Verdict, per_call, www_authenticate};
use crate::http::{Answer, json};
use crate::jsonrpc::{self, Body, code, error_object};
use crate::proxy::{ProxyDoor, denial_object};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jotd_transport::slots::Slot;
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Whether `req` asks for a WebSocket upgrade.
#[must_use]
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && h.get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn refuse(v: &Verdict) -> Answer {
    let status = match v.class() {
        Some(Class::Token) => StatusCode::UNAUTHORIZED,
        Some(Class::Policy) => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut a = json(status, &denial_object(v, None));
    if let (Verdict::Deny(r, _), StatusCode::UNAUTHORIZED) = (v, status)
        && let Ok(h) = HeaderValue::from_str(&www_authenticate(*r))
    {
        a.headers_mut().insert(WWW_AUTHENTICATE, h);
    }
    a
}

/// Handles an upgrade request for `facts` (tenant and token already read).
pub async fn upgrade(
    door: std::sync::Arc<ProxyDoor>,
    req: Request<Incoming>,
    facts: Facts,
    peer: std::net::SocketAddr,
) -> Answer {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            &error_object(
                None,
                code::INVALID_REQUEST,
                "a WebSocket upgrade needs Sec-WebSocket-Key",
                None,
            ),
        );
    };
    // The token, tenant, origin and user agent, before anything else.
    let verdict = door
        .gate
        .check(Door::WebSocket, &facts, vec![CallFacts::default()])
        .await
        .remove(0);
    // The token's decision: an allow, or a per-call denial (the upgrade
    // names no method, and a token limited to some is `method_not_allowed`
    // here) that still carries the verified token's `sub` and `exp`. The
    // node learns that subject either way: before, a method-limited token's
    // socket reached the node as nobody.
    // Opened failing open (the pool unreachable at the upgrade): the node's
    // handshake carries no subject and the socket knows no `exp`, neither of
    // which can be mended on an open socket. It is closed (1013, "try again")
    // at the first recheck jotd answers, so the client reconnects and is
    // checked whole; kept, it reached the node as nobody, and streamed past
    // the token's `exp` until a recheck happened to refuse it.
    let opened_failing_open = matches!(verdict, Verdict::FailOpen(_));
    let (exp, verified) = match &verdict {
        Verdict::Allow(d) => (d.exp, Some(d)),
        Verdict::Deny(r, d) if per_call(*r) => (d.as_ref().and_then(|d| d.exp), d.as_deref()),
        Verdict::FailOpen(_) => (None, None),
        v => return refuse(v),
    };
    // The gate refuses an allowed call whose subject no header carries whole
    // (a line break; a blank at either end or a tab, which parsers strip or
    // split); a per-call denial's subject is held to the same rule here.
    if let Some(d) = verified
        && crate::gate::unwritable(Door::WebSocket, &facts.tenant, d).is_some()
    {
        return refuse(&Verdict::Deny(jotd_core::Reason::InvalidClaim, None));
    }
    let subject = verified
        .and_then(|d| d.sub.as_deref())
        .and_then(|s| HeaderValue::from_str(s).ok());
    // A slot only for an upgrade the token allows (a refused one must not
    // make room): at `max_connections` sockets, an address holding two more
    // than this one's loses its oldest (closed 1013, "try again later").
    let Some(slot) = crate::http::admit(&door.ws_slots, peer) else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &error_object(None, code::INTERNAL, "too many WebSockets open", None),
        );
    };
    // The token's expiry comes with its decision (an allow or a per-call
    // refusal); failing open, it is learned from the first allowed call.
    let Some(upstream) = door.ws_upstream() else {
        return json(
            StatusCode::BAD_GATEWAY,
            &error_object(None, code::INTERNAL, "no upstream", None),
        );
    };
    // The node learns the tenant and subject as over HTTP (the subject of
    // the verified token, whether the upgrade was allowed or denied per
    // call; both values fit a header).
    let mut node_req =
        match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            upstream.as_str(),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("upstream WebSocket {upstream}: {e}");
                return json(
                    StatusCode::BAD_GATEWAY,
                    &error_object(None, code::INTERNAL, "upstream unavailable", None),
                );
            }
        };
    if let Ok(v) = HeaderValue::from_str(&facts.tenant) {
        node_req.headers_mut().insert("x-jotd-tenant", v);
    }
    if let Some(v) = subject {
        node_req.headers_mut().insert("x-jotd-subject", v);
    }
    if let Some(o) = door.origin_for_node(&facts) {
        node_req.headers_mut().insert(hyper::header::ORIGIN, o);
    }
    let node = match tokio::time::timeout(
        Duration::from_secs(5),
        // The node's messages are capped as its HTTP answers are
        // (`max_upstream_bytes`); tungstenite's default took up to 64 MiB.
        tokio_tungstenite::connect_async_with_config(
            node_req,
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(door.limits.max_upstream_bytes))
                    .max_frame_size(Some(door.limits.max_upstream_bytes)),
            ),
            false,
        ),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            tracing::warn!("upstream WebSocket {upstream}: {e}");
            return json(
                StatusCode::BAD_GATEWAY,
                &error_object(None, code::INTERNAL, "upstream unavailable", None),
            );
        }
        Err(_) => {
            return json(
                StatusCode::GATEWAY_TIMEOUT,
                &error_object(None, code::INTERNAL, "upstream unavailable", None),
            );
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                // A message is at most what a request body may be.
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(door.limits.max_body_bytes))
                    .max_frame_size(Some(door.limits.max_body_bytes));
                let client =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(config))
                        .await;
                relay(&door, client, node, facts, exp, opened_failing_open, &slot).await;
            }
            Err(e) => tracing::warn!("WebSocket upgrade: {e}"),
        }
    });
    let mut r = Response::new(crate::http::AnswerBody::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// How often the gateway pings a client.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent this long is gone.
const SILENT_FOR: Duration = Duration::from_secs(90);
/// A peer that has not taken a message this long is gone (the socket is
/// closed, its slot freed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest a socket waits for its token's `exp`: a validly signed token
/// may carry any `exp` (`1e19`), and an instant that far out overflows (a
/// panic). The socket's token is checked again every `websocket_recheck_ms`
/// meanwhile.
const LONGEST_EXP_WAIT: Duration = Duration::from_secs(365 * 86_400);

/// The moment `exp` passes, as a tokio instant (at most a year away).
fn deadline(exp: Option<u64>) -> Option<tokio::time::Instant> {
    exp.map(|e| {
        tokio::time::Instant::now()
            + Duration::from_secs(e.saturating_sub(unix_now())).min(LONGEST_EXP_WAIT)
    })
}

async fn relay<C, N>(
    door: &ProxyDoor,
    mut client: WebSocketStream<C>,
    mut node: WebSocketStream<N>,
    facts: Facts,
    mut exp: Option<u64>,
    opened_failing_open: bool,
    slot: &Slot,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    N: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stop = door.stop.clone();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // Rechecks in a row the pool could not answer (a burst of `overloaded`
    // is one; a pool that is gone is several).
    let mut unanswered = 0u32;
    let mut recheck = tokio::time::interval(door.limits.websocket_recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    loop {
        let expiry = deadline(exp);
        tokio::select! {
            // Not `biased`: with a fixed order a client that keeps sending
            // starves the node's answers. After `exp` nothing more reaches the
            // client whichever branch wins (`send_within` sends nothing past
            // its deadline), and the expiry branch closes the socket next.
            () = crate::http::stopped(&mut stop) => {
                close(&mut client, CloseCode::Away, "going away").await;
                break;
            }
            () = slot.closed() => {
                close(&mut client, CloseCode::Again, "closed to make room for another address").await;
                break;
            }
            () = async { tokio::time::sleep_until(expiry.expect("guarded")).await }, if expiry.is_some() => {
                close(&mut client, CloseCode::Policy, "token expired").await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENT_FOR {
                    close(&mut client, CloseCode::Away, "no answer to pings").await;
                    break;
                }
                if !send_within(&mut client, Message::Ping(Vec::new().into()), expiry).await {
                    break;
                }
            }
            _ = recheck.tick() => {
                // The token again, as at the upgrade: a key removed, a token
                // revoked or the tenant gone ends the socket, not only `exp`.
                // (A call's own verdict cannot change while the token
                // verifies: the restrictions are the token's claims.)
                let check = door.gate.check(Door::WebSocket, &facts, vec![CallFacts::default()]);
                let v = match cut_short(check, &mut stop, expiry).await {
                    Ok(mut v) => v.remove(0),
                    Err(cut) => {
                        cut.close(&mut client).await;
                        break;
                    }
                };
                unanswered = if matches!(v, Verdict::Unavailable(_)) { unanswered + 1 } else { 0 };
                match v {
                    Verdict::Deny(r, _) if !per_call(r) => {
                        close(&mut client, CloseCode::Policy, format!("token no longer valid: {}", r.as_str())).await;
                        break;
                    }
                    Verdict::Allow(_) | Verdict::Deny(..) if opened_failing_open => {
                        close(&mut client, CloseCode::Again, "opened while jotd was unreachable: reconnect to be checked").await;
                        break;
                    }
                    // Unanswered twice in a row (the pool down or overloaded
                    // for a whole recheck interval, and the gateway not
                    // failing open): a revoked token's subscriptions would
                    // otherwise stream on unchecked for as long as that lasts.
                    // Once is a burst, and closing every socket then would
                    // bring every client back at once.
                    Verdict::Unavailable(_) if unanswered >= 2 => {
                        close(&mut client, CloseCode::Again, "jotd unavailable: the token cannot be checked again").await;
                        break;
                    }
                    _ => {}
                }
            }
            msg = client.next() => {
                last_heard = tokio::time::Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                let (to_node, to_client, learned) =
                    match cut_short(door_message(door, &facts, text.as_bytes()), &mut stop, expiry).await {
                        Ok(answer) => answer,
                        Err(cut) => {
                            cut.close(&mut client).await;
                            break;
                        }
                    };
                if exp.is_none() {
                    exp = learned;
                }
                if let Some(v) = to_client
                    && !send_within(&mut client, Message::text(v.get()), expiry).await
                {
                    break;
                }
                // Past `exp` no call reaches the node either (a check that
                // came back at once, failing open, could have let one through).
                if let Some(m) = to_node
                    && !send_within(&mut node, Message::text(m), expiry).await
                {
                    break;
                }
            }
            msg = node.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if !send_within(&mut client, m, expiry).await {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    close(&mut client, CloseCode::Away, "upstream closed").await;
                    break;
                }
            },
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, node.close(None)).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, client.close(None)).await;
}

/// What ended a socket while it waited on a check.
enum Cut {
    /// The gateway drains.
    Drain,
    /// The token's `exp` passed.
    Expired,
}

impl Cut {
    async fn close<S>(self, ws: &mut WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self {
            Self::Drain => close(ws, CloseCode::Away, "going away").await,
            Self::Expired => close(ws, CloseCode::Policy, "token expired").await,
        }
    }
}

/// `work` (a check, up to `check_timeout_ms`), unless the drain begins or
/// the token expires first: the socket closes then, not after the check
/// (it waited for it, streaming past `exp` or holding the drain).
async fn cut_short<T>(
    work: impl std::future::Future<Output = T>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    expiry: Option<tokio::time::Instant>,
) -> Result<T, Cut> {
    tokio::select! {
        v = work => Ok(v),
        () = crate::http::stopped(stop) => Err(Cut::Drain),
        () = async { tokio::time::sleep_until(expiry.expect("guarded")).await }, if expiry.is_some() => Err(Cut::Expired),
    }
}

/// Sends a Close frame (bounded like any send; the socket goes either way).
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: impl Into<Utf8Bytes>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send_within(ws, Message::Close(Some(frame)), None).await;
}

/// Sends `msg`, waiting at most [`WRITE_TIMEOUT`] and never past `until`
/// (the token's expiry): a peer that stops reading must not hold the relay
/// loop, which is also what closes the socket at expiry, at drain and when
/// pings go unanswered. False: not sent (the caller closes).
async fn send_within<S>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
    until: Option<tokio::time::Instant>,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let now = tokio::time::Instant::now();
    // Past `until` nothing more goes out, even a send that would finish at
    // once (`timeout_at` polls the send before its deadline).
    if until.is_some_and(|u| u <= now) {
        return false;
    }
    let mut by = now + WRITE_TIMEOUT;
    if let Some(u) = until {
        by = by.min(u);
    }
    matches!(tokio::time::timeout_at(by, ws.send(msg)).await, Ok(Ok(())))
}

/// One client message: what goes to the node, what the gateway answers at
/// once, and the token's `exp` when a decision carried it.
async fn door_message(
    door: &ProxyDoor,
    facts: &Facts,
    text: &[u8],
) -> (Option<String>, Option<Box<RawValue>>, Option<u64>) {
    let parsed = match jsonrpc::parse(text, &door.table, door.limits.max_batch_calls) {
        Ok(p) => p,
        Err(e) => {
            return (
                None,
                Some(error_object(None, e.code, &e.message, None)),
                None,
            );
        }
    };
    let (items, single) = match parsed {
        Body::Single(c) => (vec![c], true),
        Body::Batch(cs) => (cs, false),
    };
    let calls = CallFacts::of_calls(&items);
    let mut verdicts = door.gate.check(Door::Proxy, facts, calls).await.into_iter();
    let mut forward = Vec::new();
    let mut answers = Vec::new();
    let mut exp = None;
    for item in &items {
        match item {
            Err(i) => answers.push(error_object(i.id.as_deref(), i.code, &i.message, None)),
            Ok(c) => {
                let v = verdicts.next().expect("one verdict per call");
                if let Verdict::Allow(d) = &v {
                    exp = exp.or(d.exp);
                }
                if v.allowed() {
                    forward.push(c.raw.get().to_owned());
                } else if c.id.is_some() {
                    answers.push(denial_object(&v, c.id.as_deref()));
                }
            }
        }
    }
    let to_node = match (single, forward.len()) {
        (_, 0) => None,
        (true, _) => forward.pop(),
        (false, _) => Some(format!("[{}]", forward.join(","))),
    };
    let to_client = match (single, answers.len()) {
        (_, 0) => None,
        (true, _) => answers.pop(),
        (false, _) => Some(jsonrpc::raw_array(answers.iter().map(|a| &**a))),
    };
    (to_node, to_client, exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Any `exp` a signed token carries gives a deadline: `1e19` panicked
    /// (an instant past what the clock holds) and the socket was dropped.
    #[tokio::test]
    async fn any_exp_makes_a_deadline() {
        let now = tokio::time::Instant::now();
        for exp in [0, unix_now() + 60, 10_000_000_000_000_000_000, u64::MAX] {
            let at = deadline(Some(exp)).unwrap();
            assert!(at >= now && at <= now + LONGEST_EXP_WAIT + Duration::from_secs(1));
        }
        assert!(deadline(None).is_none());
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_does_not_hold_a_send() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The client connects and never reads.
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let big = "x".repeat(1 << 20);
        let mut sent = 0;
        let refused = loop {
            let until = tokio::time::Instant::now() + Duration::from_millis(300);
            if !send_within(&mut ws, Message::text(big.clone()), Some(until)).await {
                break true;
            }
            sent += 1;
            if sent == 256 {
                break false;
            }
        };
        assert!(
            refused,
            "256 MiB went to a client that reads nothing: sends are not bounded"
        );
    }
}
