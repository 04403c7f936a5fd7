//! The controller API of a real `flynn server` over real sockets, against clients that are
//! slow, send too much or the wrong thing, or go away: request-head deadline, body limit,
//! non-object bodies, and `/events` streams (history larger than a page, subscribers that
//! never read or disconnect, retention).

use std::time::{Duration, Instant};

use flynn_testkit::client::{self, Conn, Response};
use flynn_testkit::eventually;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Client, Server};

/// One request with the controller key on a fresh connection.
async fn call(server: &Server, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
        server.key()
    );
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        raw.push_str("\r\n");
    }
    client::send(&server.controller.to_string(), raw.as_bytes())
        .await
        .expect("a response")
}

async fn json_of(server: &Server, path: &str) -> Value {
    let response = call(server, "GET", path, None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().expect("JSON")
}

/// A value of the controller's `/metrics`.
async fn metric(server: &Server, name: &str) -> f64 {
    let response = call(server, "GET", "/metrics", None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .text()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The server's open descriptors.
fn descriptors(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid().expect("running")))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The server's descriptors once the connections of earlier requests are closed: the least
/// over half a second.
async fn settled_descriptors(server: &Server) -> usize {
    let mut least = descriptors(server);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        least = least.min(descriptors(server));
    }
    least
}

/// Asserts an error answer with this status and code.
fn expect_error(response: &Response, status: u16, code: &str) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json().expect("a JSON error");
    assert_eq!(body["code"], code, "{body}");
    body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_unfinished_request_head_is_cut_off() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    let started = Instant::now();
    // Slowloris: a head that never ends, one byte every 200 ms.
    let mut conn = Conn::open(&server.controller.to_string())
        .await
        .expect("connect");
    conn.write(b"GET /apps HTTP/1.1\r\nHost: controller\r\nX-Slow: ")
        .await
        .expect("write");
    let mut cut_off = false;
    while started.elapsed() < Duration::from_secs(20) {
        if conn.write(b"a").await.is_err() || conn.closed_within(Duration::from_millis(200)).await {
            cut_off = true;
            break;
        }
    }
    let after = started.elapsed();
    assert!(cut_off, "the connection is still open after {after:?}");
    // The default deadline is 10 s.
    assert!(after >= Duration::from_secs(9), "cut off after {after:?}");
    assert!(after < Duration::from_secs(15), "cut off after {after:?}");

    // A shorter one through the flag; a client that says nothing is cut off too.
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--controller-header-timeout", "1s"]).await;
    let mut silent = Conn::open(&server.controller.to_string())
        .await
        .expect("connect");
    assert!(silent.closed_within(Duration::from_secs(4)).await);
    // A whole request is still answered.
    assert_eq!(call(&server, "GET", "/apps", None).await.status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    let body_len = 10 << 20;
    for chunked in [false, true] {
        let stream = TcpStream::connect(server.controller)
            .await
            .expect("connect");
        let (mut read, mut write) = stream.into_split();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {body_len}")
        };
        let head = format!(
            "POST /apps HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n",
            server.key()
        );
        // The body goes out while the answer is read: the server may answer (and close)
        // before it has taken it all.
        let writer = tokio::spawn(async move {
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < body_len {
                if chunked {
                    write
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await?;
                }
                write.write_all(&chunk).await?;
                if chunked {
                    write.write_all(b"\r\n").await?;
                }
                sent += chunk.len();
            }
            std::io::Result::Ok(())
        });
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut answer)).await;
        writer.abort();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "chunked: {chunked}: {text}"
        );
        let body: Value = text
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body.trim()).ok())
            .unwrap_or_else(|| panic!("a JSON body: {text}"));
        assert_eq!(body["code"], "payload_too_large", "{body}");
        assert!(body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2 MiB"));
    }
    // Nothing was created; a body under the limit still is.
    assert_eq!(json_of(&server, "/apps").await, json!([]));
    let response = call(&server, "POST", "/apps", Some(r#"{"name": "fits"}"#)).await;
    assert_eq!(response.status, 201, "{}", response.text());
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    let created = call(&server, "POST", "/apps", Some(r#"{"name": "base"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let route = call(
        &server,
        "POST",
        "/apps/base/routes",
        Some(r#"{"domain": "base.example.com"}"#),
    )
    .await;
    assert_eq!(route.status, 201, "{}", route.text());
    let route_id = route.json().expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = json_of(&server, "/events").await;
    let endpoints = [
        ("POST", "/apps".to_owned()),
        ("POST", "/apps/base/routes".to_owned()),
        ("PUT", format!("/apps/base/routes/{route_id}")),
        ("PUT", "/apps/base/release".to_owned()),
        ("PUT", "/apps/base/formations/some-release".to_owned()),
        ("POST", "/artifacts".to_owned()),
        ("POST", "/releases".to_owned()),
        ("POST", "/certificates".to_owned()),
        ("POST", "/services/base-web/instances".to_owned()),
    ];
    for (method, path) in &endpoints {
        for body in [
            "[]",
            "[{\"name\": \"x\"}]",
            "null",
            "\"x\"",
            "1",
            "true",
            " ",
        ] {
            let response = call(&server, method, path, Some(body)).await;
            let message = expect_error(&response, 400, "validation_error");
            assert!(
                message.contains("JSON object"),
                "{method} {path} {body}: {message}"
            );
        }
    }
    // Nothing was written.
    let apps = json_of(&server, "/apps").await;
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    assert_eq!(json_of(&server, "/events").await, before);
    assert_eq!(json_of(&server, "/services").await, json!([]));
}

/// Opens an `/events` stream; the connection, after the response head.
async fn subscribe(server: &Server, since: Option<i64>, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let mut stream = socket.connect(server.controller).await.expect("connect");
    let resume = since
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /events HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {}\r\n\
         Accept: text/event-stream\r\n{resume}\r\n",
        server.key()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

/// Server-sent events as they come off a chunked response: (event name, id, data).
struct Events {
    stream: TcpStream,
    text: String,
    raw: Vec<u8>,
    head_read: bool,
}

type Sse = (Option<String>, Option<i64>, Value);

impl Events {
    fn new(stream: TcpStream) -> Events {
        Events {
            stream,
            text: String::new(),
            raw: Vec::new(),
            head_read: false,
        }
    }

    /// The next event (comments and keep-alives skipped); None at the end of the stream.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(event) = self.parse() {
                return Some(event);
            }
            let mut chunk = vec![0; 64 << 10];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("an event within 10 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&chunk[..n]);
            self.dechunk();
        }
    }

    /// Moves whole chunks of the body from `raw` to `text`.
    fn dechunk(&mut self) {
        if !self.head_read {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            self.raw.drain(..end + 4);
            self.head_read = true;
        }
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            let data = self.raw[line + 2..line + 2 + size].to_vec();
            self.text.push_str(&String::from_utf8_lossy(&data));
            self.raw.drain(..line + 2 + size + 2);
        }
    }

    fn parse(&mut self) -> Option<Sse> {
        loop {
            let end = self.text.find("\n\n")?;
            let block: String = self.text.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            if let Some(data) = data {
                return Some((name, id, data));
            }
        }
    }
}

fn ids(events: &Value) -> Vec<i64> {
    events
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn a_history_of_many_pages_streams_whole_and_in_order() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    // Each app is two events: the app and its default route.
    for i in 0..120 {
        let body = format!(r#"{{"name": "app{i}"}}"#);
        let response = call(&server, "POST", "/apps", Some(&body)).await;
        assert_eq!(response.status, 201, "{}", response.text());
    }
    let history = ids(&json_of(&server, "/events").await);
    assert_eq!(history.len(), 240);
    assert!(history.windows(2).all(|w| w[0] < w[1]), "{history:?}");
    let latest = ids(&json_of(&server, "/events?count=3").await);
    assert_eq!(latest, history[237..]);
    let routes = ids(&json_of(&server, "/events?object_types=route").await);
    assert_eq!(routes.len(), 120);

    let mut events = Events::new(subscribe(&server, None, None).await);
    let mut streamed = Vec::new();
    while streamed.len() < history.len() {
        let (name, id, data) = events.next().await.expect("the stream goes on");
        assert_eq!(name, None);
        assert_eq!(data["id"].as_i64(), id);
        streamed.push(id.expect("an id"));
    }
    assert_eq!(streamed, history);
    // Then what happens next.
    call(&server, "POST", "/apps", Some(r#"{"name": "later"}"#)).await;
    let mut live = Vec::new();
    for _ in 0..2 {
        let (_, id, data) = events.next().await.expect("a live event");
        assert!(id > history.last().copied());
        live.push(data["object_type"].clone());
    }
    live.sort_by_key(Value::to_string);
    assert_eq!(live, [json!("app"), json!("route")]);

    // Resuming from the middle gets the rest, in order.
    let mut resumed = Events::new(subscribe(&server, Some(history[99]), None).await);
    for expected in &history[100..] {
        let (_, id, _) = resumed.next().await.expect("the stream goes on");
        assert_eq!(id, Some(*expected));
    }
}

/// A release whose event holds `size` bytes.
async fn big_release(server: &Server, size: usize) {
    let body = json!({"env": {"BIG": "x".repeat(size)}}).to_string();
    let response = call(server, "POST", "/releases", Some(&body)).await;
    assert_eq!(response.status, 201, "{}", response.text());
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_and_freed() {
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--events-stall-timeout", "1s"]).await;
    // 12 MB of history: more than the socket buffers take.
    for _ in 0..120 {
        big_release(&server, 100_000).await;
    }
    let idle = settled_descriptors(&server).await;
    let stream = subscribe(&server, None, Some(4096)).await;
    eventually(Duration::from_secs(5), "a live subscriber", || async {
        metric(&server, "flynn_controller_event_subscribers").await == 1.0
    })
    .await
    .expect("the subscriber is counted");
    // It reads nothing: dropped after the stall timeout, and its connection closed after
    // as long again.
    eventually(
        Duration::from_secs(10),
        "the subscriber dropped",
        || async { metric(&server, "flynn_controller_event_subscribers").await == 0.0 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(
        metric(&server, "flynn_controller_event_subscribers_dropped_total").await,
        1.0
    );
    eventually(Duration::from_secs(5), "the descriptor closed", || async {
        descriptors(&server) <= idle
    })
    .await
    .expect("the server closed the connection");
    // The client sees its end: what was sent, then EOF (no end of the chunked body).
    let mut events = Events::new(stream);
    let mut n = 0;
    while events.next().await.is_some() {
        n += 1;
    }
    assert!(n < 120, "{n} events");
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_fell_behind() {
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--events-stall-timeout", "2s"]).await;
    for _ in 0..120 {
        big_release(&server, 100_000).await;
    }
    let mut events = Events::new(subscribe(&server, None, Some(4096)).await);
    // Not reading for a while...
    eventually(Duration::from_secs(10), "a dropped subscriber", || async {
        metric(&server, "flynn_controller_event_subscribers_dropped_total").await == 1.0
    })
    .await
    .expect("the subscriber is dropped");
    // ...then reading (within the stall timeout again, or the connection goes): the events
    // up to where it stopped, then the reason.
    let mut last = 0;
    let end = loop {
        let (name, id, data) = events.next().await.expect("the last words before the end");
        if name.as_deref() == Some("error") {
            break data;
        }
        last = id.expect("an id");
    };
    assert_eq!(end["code"], "fell_behind", "{end}");
    assert_eq!(end["detail"]["last_event_id"], last, "{end}");
    assert!(end["message"]
        .as_str()
        .unwrap_or_default()
        .contains("Last-Event-ID"));
    assert!(events.next().await.is_none(), "the stream ends");
    // Resuming from there gets the rest.
    let history = ids(&json_of(&server, "/events").await);
    let rest: Vec<i64> = history.into_iter().filter(|id| *id > last).collect();
    let mut resumed = Events::new(subscribe(&server, Some(last), None).await);
    for expected in rest {
        let (_, id, _) = resumed.next().await.expect("the stream goes on");
        assert_eq!(id, Some(expected));
    }
}

#[tokio::test]
async fn a_disconnected_subscriber_is_freed_at_once() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    call(&server, "POST", "/apps", Some(r#"{"name": "one"}"#)).await;
    let idle = settled_descriptors(&server).await;
    let mut events = Events::new(subscribe(&server, None, None).await);
    assert!(events.next().await.is_some());
    // Well before the next keep-alive comment (15 s).
    let took = freed_when_gone(&server, idle, events).await;
    eprintln!("freed {took:?} after the client went");
}

#[tokio::test]
async fn the_history_is_capped_by_count_bytes_and_age() {
    // Count.
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--events-max-count", "25"]).await;
    for i in 0..30 {
        call(
            &server,
            "POST",
            "/apps",
            Some(&format!(r#"{{"name": "a{i}"}}"#)),
        )
        .await;
    }
    eventually(Duration::from_secs(5), "25 events kept", || async {
        ids(&json_of(&server, "/events").await).len() == 25
    })
    .await
    .expect("the oldest events pruned");
    let names: Vec<Value> = json_of(&server, "/events?object_types=app")
        .await
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["data"]["name"].clone())
        .collect();
    // The latest 25 of 60 events: the last 12 apps and one event of the app before.
    assert!((12..=13).contains(&names.len()), "{names:?}");
    assert_eq!(names.last(), Some(&json!("a29")));
    assert_eq!(
        metric(&server, "flynn_controller_events_retained").await,
        25.0
    );
    eventually(Duration::from_secs(5), "35 events deleted", || async {
        metric(&server, "flynn_controller_events_pruned_total").await == 35.0
    })
    .await
    .expect("the pruned events deleted from the store");

    // Bytes.
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--events-max-bytes", "300KiB"]).await;
    for _ in 0..10 {
        big_release(&server, 100_000).await;
    }
    eventually(Duration::from_secs(5), "at most 300 KiB kept", || async {
        metric(&server, "flynn_controller_events_retained_bytes").await <= 300.0 * 1024.0
    })
    .await
    .expect("the oldest events pruned");
    let kept = ids(&json_of(&server, "/events").await);
    assert!((1..=3).contains(&kept.len()), "{kept:?}");

    // Age.
    let client = Client::new();
    let server = Server::embedded_with(&client, &["--events-max-age", "2s"]).await;
    call(&server, "POST", "/apps", Some(r#"{"name": "old"}"#)).await;
    assert_eq!(ids(&json_of(&server, "/events").await).len(), 2);
    eventually(Duration::from_secs(6), "old events gone", || async {
        ids(&json_of(&server, "/events").await).is_empty()
    })
    .await
    .expect("events older than 2 s pruned");
}

#[tokio::test]
async fn a_subscriber_gone_in_the_middle_of_a_large_history_is_freed_at_once() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    for _ in 0..60 {
        big_release(&server, 100_000).await;
    }
    let idle = settled_descriptors(&server).await;
    // Reads a little, then stops while the history is still coming, then goes.
    let mut events = Events::new(subscribe(&server, None, Some(4096)).await);
    assert!(events.next().await.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    freed_when_gone(&server, idle, events).await;
}

/// Checks that the subscriber `events` holds one descriptor over `idle`, drops it (the client
/// goes) and checks that its descriptor and the subscriber are gone within a few seconds; how
/// long that took.
async fn freed_when_gone(server: &Server, idle: usize, events: Events) -> Duration {
    eventually(Duration::from_secs(1), "one more descriptor", || async {
        descriptors(server) == idle + 1
    })
    .await
    .expect("the subscriber's descriptor");
    drop(events);
    let started = Instant::now();
    eventually(Duration::from_secs(3), "the descriptor closed", || async {
        descriptors(server) <= idle
    })
    .await
    .expect("the descriptor is closed at once");
    eventually(Duration::from_secs(1), "no subscriber", || async {
        metric(server, "flynn_controller_event_subscribers").await == 0.0
    })
    .await
    .expect("the subscriber is gone");
    started.elapsed()
}
