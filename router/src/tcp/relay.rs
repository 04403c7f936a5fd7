//! Moving a proxied connection's bytes both ways until both sides have finished.
//!
//! Each direction splices (see [`super::pipe`]): socket → pipe when the source is readable,
//! pipe → socket when the destination is writable, driven by tokio's readiness (`readable()`,
//! `writable()`, `try_io`) with non-blocking splice calls. Where splice cannot be used (no pipe
//! to be had, or a kernel or socket that refuses it with EINVAL, ENOSYS or EOPNOTSUPP) the
//! direction copies through a user-space buffer instead. At the end of one side's stream the
//! other side's writing is shut down (half-close) and the other direction carries on; an error
//! on either ends both.

use std::io;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::pipe::{Pipe, Pipes};

/// The buffer of a direction that copies instead of splicing (16 KiB, as nginx's and HAProxy's),
/// allocated only when it falls back.
const COPY_BUFFER: usize = 16 * 1024;

/// A direction gives the thread to others after moving this much in one go: a busy connection
/// would otherwise keep it for up to tokio's whole budget (128 readiness checks, ~16 MiB), and
/// the I/O driver is polled only between tasks, so that other connections' connects and reads
/// (their timeouts running) waited for it.
const YIELD_EVERY: u64 = 1 << 20;

/// How a relay moves bytes: `Splice` (falling back to copying per direction where it must), or
/// `Copy` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Splice,
    Copy,
}

/// Bytes moved each way: client → upstream, upstream → client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Relays between `client` and `upstream` until both directions reached the end of their
/// stream, or either failed.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    pipes: &Pipes,
    mode: Mode,
) -> io::Result<Moved> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let (to_upstream, to_client) = tokio::try_join!(
        one_way(&mut client_read, &mut upstream_write, pipes, mode),
        one_way(&mut upstream_read, &mut client_write, pipes, mode),
    )?;
    Ok(Moved {
        to_upstream,
        to_client,
    })
}

/// Moves `from`'s stream into `to`, then shuts `to`'s writing down; returns the bytes moved.
async fn one_way(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    pipes: &Pipes,
    mode: Mode,
) -> io::Result<u64> {
    let mut moved = 0;
    if mode == Mode::Splice {
        match splice_all(from.as_ref(), to.as_ref(), pipes, &mut moved).await? {
            Spliced::Done => {
                to.shutdown().await?;
                return Ok(moved);
            }
            Spliced::CannotSplice(why) => {
                tracing::debug!(%why, moved, "TCP route: copying instead of splicing");
            }
        }
    }
    copy_all(from.as_ref(), to.as_ref(), &mut moved).await?;
    to.shutdown().await?;
    Ok(moved)
}

/// How splicing a direction ended.
enum Spliced {
    /// The source's stream ended, everything moved.
    Done,
    /// Splice cannot be used here; nothing is left in a pipe, the caller may copy the rest.
    CannotSplice(io::Error),
}

/// Splices until `from`'s stream ends. The pipe is borrowed from `pipes` when `from` turns
/// readable and given back whenever it is empty and `from` has nothing more to read.
async fn splice_all(
    from: &TcpStream,
    to: &TcpStream,
    pipes: &Pipes,
    moved: &mut u64,
) -> io::Result<Spliced> {
    let mut held: Option<Pipe> = None;
    let mut since_yield = 0;
    loop {
        from.readable().await?;
        let pipe = match held.take() {
            Some(pipe) => pipe,
            None => match pipes.take() {
                Ok(pipe) => pipe,
                Err(why) => return Ok(Spliced::CannotSplice(why)),
            },
        };
        let filled = match from.try_io(Interest::READABLE, || pipe.fill(from)) {
            Ok(0) => {
                pipes.give_back(pipe);
                return Ok(Spliced::Done);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing to read after all: idle, so the pipe goes back until there is.
                pipes.give_back(pipe);
                continue;
            }
            Err(e) if unsupported(&e) => {
                pipes.give_back(pipe);
                return Ok(Spliced::CannotSplice(e));
            }
            Err(e) => return Err(e),
        };
        // A pipe dropped with bytes in it (an error below) is closed, never given back.
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || pipe.drain(to, left)) {
                Ok(n) => left -= n.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        *moved += filled as u64;
        held = Some(pipe);
        since_yield += filled as u64;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Whether splice itself is refused for these descriptors (rather than the connection failing).
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS | nix::errno::Errno::EOPNOTSUPP)
    )
}

/// Copies through a user-space buffer until `from`'s stream ends.
async fn copy_all(from: &TcpStream, to: &TcpStream, moved: &mut u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER].into_boxed_slice();
    let mut since_yield = 0;
    loop {
        from.readable().await?;
        let read = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < read {
            to.writable().await?;
            match to.try_write(&buf[written..read]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        *moved += read as u64;
        since_yield += read as u64;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}
