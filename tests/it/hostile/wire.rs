//! What the hostile suite sends over the wire, shared by its api and ingress
//! cases: raw HTTP/1.1 exchanges read to their end, slow-drip and
//! connection-hoarding clients, and HubSpot-signed webhook deliveries.

use crate::support::APP_ID;
use crmsync::providers::hubspot::webhook::sign_v3;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any one step may take before the test fails (a hang guard, not
/// a measurement).
pub(super) const GUARD: Duration = Duration::from_secs(4);

/// A slow client's pace: one write per this long (far slower than the 1 s
/// read timeouts these cases configure).
const DRIP: Duration = Duration::from_millis(100);

/// An answer read off the wire.
pub(super) struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    /// Whether it is a problem+json document for its own status.
    pub fn is_problem(&self) -> bool {
        self.head
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json")
            && serde_json::from_str::<Value>(&self.body)
                .is_ok_and(|v| v["status"].as_u64() == Some(u64::from(self.status)))
    }
}

/// Sends raw bytes on a fresh connection and reads the answer until the
/// server closes it (every request here asks it to).
pub(super) async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_answer(&mut stream).await
}

/// Reads until the server closes the connection.
pub(super) async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes in time")
        .ok();
    Answer::parse(&raw)
}

/// Sends `head` (a request line and headers, without the blank line) one
/// byte per drip: the server must close the connection within [`GUARD`],
/// having answered no success.
pub(super) async fn drip_headers(addr: SocketAddr, head: &str) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = head.to_string();
    let drip = tokio::spawn(async move {
        for byte in head.bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(DRIP).await;
        }
    });
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(GUARD, read.read_to_end(&mut answer)).await;
    drip.abort();
    assert!(
        ended.is_ok(),
        "the connection was still open after {GUARD:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.starts_with("HTTP/1.1 2"), "{text}");
}

/// Sends `head` (whole, with its blank line and a `content-length` of
/// more than 60) at once, then its body one byte per drip: the server must
/// answer and close within [`GUARD`]. Returns the answer.
pub(super) async fn drip_body(addr: SocketAddr, head: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("headers");
    let (mut read, mut write) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..60 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(DRIP).await;
        }
    });
    let mut raw = Vec::new();
    let ended = tokio::time::timeout(GUARD, read.read_to_end(&mut raw)).await;
    drip.abort();
    assert!(
        ended.is_ok(),
        "the connection was still open after {GUARD:?}"
    );
    Answer::parse(&raw)
}

/// With a server capped at two connections: two idle clients hold them, a
/// third is answered a problem+json 503 with `Retry-After: 1`, and once one
/// leaves, `GET /health` is served again. Returns the client still holding
/// its slot.
pub(super) async fn assert_capped_at_two(addr: SocketAddr) -> TcpStream {
    let first = TcpStream::connect(addr).await.expect("connect");
    let second = TcpStream::connect(addr).await.expect("connect");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let answer = read_answer(&mut third).await;
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
    assert!(answer.head.to_ascii_lowercase().contains("retry-after: 1"));
    drop(first);
    let health = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    assert_eq!(exchange_once_free(addr, health).await.status, 200);
    second
}

/// Sends `request` on a fresh connection, again while the server answers
/// 503 for want of a free slot: a server gives a closed connection's slot
/// back once its task ends, a moment after the client saw the close.
pub(super) async fn exchange_once_free(addr: SocketAddr, request: &[u8]) -> Answer {
    let started = std::time::Instant::now();
    loop {
        let answer = exchange(addr, request).await;
        if answer.status != 503 {
            return answer;
        }
        assert!(
            started.elapsed() < GUARD,
            "a freed slot was never reused: {}",
            answer.head
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A HubSpot `contact.propertyChange` event of account `portal`.
pub(super) fn event(portal: u64, contact: u64, event_id: u64) -> Value {
    json!({"eventId": event_id, "subscriptionId": 1, "portalId": portal, "appId": APP_ID,
           "occurredAt": chrono::Utc::now().timestamp_millis(), "subscriptionType": "contact.propertyChange",
           "attemptNumber": 0, "objectId": contact, "propertyName": "firstname", "propertyValue": "X",
           "changeSource": "CRM_UI"})
}

/// HubSpot's v3 signature headers of a POST of `body` to `url`.
pub(super) fn v3_headers(secret: &str, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = chrono::Utc::now().timestamp_millis().to_string();
    vec![
        (
            "x-hubspot-signature-v3",
            sign_v3(secret.as_bytes(), "POST", url, body, &ts),
        ),
        ("x-hubspot-request-timestamp", ts),
    ]
}

/// A POST to the app-wide webhook path with a chosen `Host`.
pub(super) fn post(host: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /webhooks/hubspot HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Delivers `events` to the ingress at `addr` (listening on loopback, so
/// the signed URL is its bound address) as HubSpot does, signed with
/// `secret`; returns the answer.
pub(super) async fn deliver(addr: SocketAddr, secret: &str, events: &[Value]) -> Answer {
    let body = serde_json::to_vec(events).expect("json");
    let url = format!("http://{addr}/webhooks/hubspot");
    exchange(
        addr,
        &post(&addr.to_string(), &v3_headers(secret, &url, &body), &body),
    )
    .await
}
