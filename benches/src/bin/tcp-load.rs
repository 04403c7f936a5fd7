//! The two ends of benches/tcp.sh: a TCP server that sinks, sources or echoes, and the clients
//! that push a stream through a proxy or hold idle connections open.
//!
//!   tcp-load serve ADDR           # the backend
//!   tcp-load push ADDR BYTES up   # BYTES client → server; prints `<bytes> <seconds>`
//!   tcp-load push ADDR BYTES down # BYTES server → client
//!   tcp-load hold ADDR N          # N connections, one echoed message each, then held open
//!                                 # (prints `open` once all are), until killed
//!
//! A connection starts with a command byte: `u` + 8 bytes (length, big-endian): the server reads
//! that many bytes, then answers the 8-byte count it read; `d` + 8 bytes: the server writes that
//! many; `e`: the server echoes until the end of the stream.

use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What each read and write moves at most (iperf3: 128 KiB).
const CHUNK: usize = 256 * 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => runtime.block_on(serve(addr)),
        ["push", addr, bytes, direction] => {
            let bytes: u64 = bytes.parse().context("BYTES")?;
            let up = match direction {
                "up" => true,
                "down" => false,
                _ => bail!("direction: up or down, not {direction}"),
            };
            let (moved, secs) = runtime.block_on(push(addr, bytes, up))?;
            println!("{moved} {secs:.6}");
            Ok(())
        }
        ["hold", addr, n] => runtime.block_on(hold(addr, n.parse().context("N")?)),
        _ => bail!("usage: tcp-load serve ADDR | push ADDR BYTES up|down | hold ADDR N"),
    }
}

async fn serve(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.context("bind")?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream).await {
                eprintln!("tcp-load serve: {e:#}");
            }
        });
    }
}

async fn serve_one(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let command = stream.read_u8().await?;
    match command {
        b'u' => {
            let len = stream.read_u64().await?;
            let mut buf = vec![0u8; CHUNK];
            let mut read = 0u64;
            while read < len {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                read += n as u64;
            }
            stream.write_u64(read).await?;
        }
        b'd' => {
            let len = stream.read_u64().await?;
            write_zeros(&mut stream, len).await?;
            stream.shutdown().await?;
        }
        b'e' => {
            let (mut r, mut w) = stream.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        other => bail!("unknown command byte {other}"),
    }
    Ok(())
}

async fn write_zeros(stream: &mut TcpStream, len: u64) -> anyhow::Result<()> {
    let buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Moves `bytes` one way: the bytes that arrived and the seconds from connect to the end.
async fn push(addr: &str, bytes: u64, up: bool) -> anyhow::Result<(u64, f64)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut head = [0u8; 9];
    head[0] = if up { b'u' } else { b'd' };
    head[1..].copy_from_slice(&bytes.to_be_bytes());
    stream.write_all(&head).await?;
    let moved = if up {
        write_zeros(&mut stream, bytes).await?;
        stream.read_u64().await.context("the server's count")?
    } else {
        let mut buf = vec![0u8; CHUNK];
        let mut read = 0u64;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        read
    };
    if moved != bytes {
        bail!("{moved} bytes arrived of {bytes}");
    }
    Ok((moved, start.elapsed().as_secs_f64()))
}

async fn hold(addr: &str, n: usize) -> anyhow::Result<()> {
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        stream.write_all(b"eping").await?;
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.context("echo")?;
        if &back != b"ping" {
            bail!("echo changed: {back:?}");
        }
        open.push(stream);
    }
    println!("open");
    std::future::pending::<()>().await;
    drop(open);
    Ok(())
}
