//! The relay on real loopback sockets: a test client ↔ relay ↔ a test upstream.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{relay, Mode, Moved, Pipes};

/// Two connected sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.expect("connect"), accepted.expect("accept").0)
}

/// The test's client end, its upstream end, and the relay running between them.
async fn relayed(pipes: Arc<Pipes>, mode: Mode) -> (TcpStream, TcpStream, JoinHandle<Moved>) {
    let (client, mut client_side) = pair().await;
    let (mut upstream_side, upstream) = pair().await;
    let task = tokio::spawn(async move {
        relay(&mut client_side, &mut upstream_side, &pipes, mode)
            .await
            .expect("relay")
    });
    (client, upstream, task)
}

/// `len` bytes of a pattern that a shifted or dropped block would break.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` then shuts writing down, while reading everything the other side sends.
async fn exchange(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    let _w = writer.await.expect("writer");
    got
}

async fn both_ways(mode: Mode) {
    const LEN: usize = 24 << 20;
    let pipes = Arc::new(Pipes::default());
    let (client, upstream, task) = relayed(pipes, mode).await;
    let up = pattern(LEN, 1);
    let down = pattern(LEN + 12345, 2);
    let (at_upstream, at_client) = tokio::join!(
        exchange(upstream, down.clone()),
        exchange(client, up.clone())
    );
    assert!(at_upstream == up, "client → upstream bytes changed");
    assert!(at_client == down, "upstream → client bytes changed");
    let moved = task.await.expect("relay task");
    assert_eq!(
        moved,
        Moved {
            to_upstream: LEN as u64,
            to_client: LEN as u64 + 12345
        }
    );
}

#[tokio::test]
async fn splicing_moves_large_streams_both_ways_unchanged() {
    both_ways(Mode::Splice).await;
}

#[tokio::test]
async fn copying_moves_large_streams_both_ways_unchanged() {
    both_ways(Mode::Copy).await;
}

async fn half_close(mode: Mode) {
    let (mut client, mut upstream, task) = relayed(Arc::new(Pipes::default()), mode).await;
    client.write_all(b"request").await.expect("write");
    client
        .shutdown()
        .await
        .expect("client shuts its writing down");
    // The upstream reads the request and then the end of the stream...
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), upstream.read_to_end(&mut got))
        .await
        .expect("EOF passed on")
        .expect("read");
    assert_eq!(got, b"request");
    // ...and can still answer, at length, through the other direction.
    let answer = pattern(3 << 20, 3);
    upstream.write_all(&answer).await.expect("answer");
    upstream.shutdown().await.expect("upstream done");
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.expect("read answer");
    assert!(back == answer, "answer changed");
    let moved = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the relay ends once both sides ended")
        .expect("relay task");
    assert_eq!(moved.to_upstream, 7);
}

#[tokio::test]
async fn splicing_keeps_a_half_closed_connection_answering() {
    half_close(Mode::Splice).await;
}

#[tokio::test]
async fn copying_keeps_a_half_closed_connection_answering() {
    half_close(Mode::Copy).await;
}

#[tokio::test]
async fn idle_connections_hold_no_pipe() {
    let pipes = Arc::new(Pipes::default());
    let (mut client, mut upstream, _task) = relayed(pipes.clone(), Mode::Splice).await;
    // Bytes both ways at once: each direction borrows a pipe while they move.
    let big = pattern(4 << 20, 4);
    let (mut got_up, mut got_down) = (vec![0u8; big.len()], vec![0u8; big.len()]);
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let (w1, w2, r1, r2) = tokio::join!(
        cw.write_all(&big),
        uw.write_all(&big),
        ur.read_exact(&mut got_up),
        cr.read_exact(&mut got_down)
    );
    w1.and(w2).expect("write");
    r1.and(r2).expect("read");
    assert!(got_up == big && got_down == big, "bytes changed");
    assert!(pipes.made() >= 1);
    // Both directions now wait for bytes: every pipe made is back in the pool.
    let mut waited = 0;
    while pipes.idle() < pipes.made() && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(
        pipes.idle(),
        pipes.made(),
        "an idle connection holds a pipe"
    );
    // The next bytes borrow a pooled pipe rather than making one.
    let made = pipes.made();
    let mut buf = [0u8; 5];
    client.write_all(b"again").await.expect("write");
    upstream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"again");
    assert_eq!(pipes.made(), made, "a new pipe made while one was idle");
}

#[tokio::test]
async fn a_reset_upstream_ends_the_relay_with_an_error() {
    let (client_side_peer, mut client_side) = pair().await;
    let (mut upstream_side, upstream) = pair().await;
    let pipes = Pipes::default();
    let relaying = relay(&mut client_side, &mut upstream_side, &pipes, Mode::Splice);
    // The upstream closes with unread bytes: the kernel sends a reset.
    let reset = async {
        let mut client = client_side_peer;
        client.write_all(b"unread").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream.set_zero_linger().expect("linger 0");
        drop(upstream);
        client
    };
    let (result, _client) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), relaying),
        reset
    );
    assert!(
        result.expect("the relay ends").is_err(),
        "a reset is an error"
    );
}
