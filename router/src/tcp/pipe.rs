//! The kernel pipes a TCP route's bytes pass through, and the pool that lends them out.
//!
//! splice(2) moves bytes between a socket and a pipe without copying them to user space: socket
//! → pipe takes references to the received pages, pipe → socket hands them to the other socket.
//! A direction of a connection holds a pipe only while bytes are moving: it borrows one when its
//! socket turns readable and gives it back once the pipe is empty and the socket has nothing
//! more to read (as HAProxy's pipe pool does), so an idle connection holds no pipe at all.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::net::TcpStream;

/// What each pipe is asked to hold (F_SETPIPE_SZ; the kernel's default is 64 KiB). Bigger
/// pipes move more per splice call. Swept with benches/tcp.sh (2 GB, one connection, two
/// alternated rounds, MB/s up/down against direct's ~3000): 64 KiB 1787/1428 and 1760/1694,
/// 256 KiB 1878/1484 and 1940/2069, 1 MiB 2129/2124 and 1915/1942. 1 MiB was ~10 % faster, but a
/// pipe fills to its size behind a slow client (four times the kernel memory per direction),
/// and `fs.pipe-user-pages-soft` (64 MiB of pipe capacity per user by default) is reached after
/// a quarter as many pipes, past which the kernel makes an unprivileged user's new pipes two
/// pages small. The kernel may refuse the size (that limit): the pipe then keeps the size it
/// got.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Idle pipes kept for reuse, at most. An empty pipe costs about a kilobyte of kernel memory
/// and two descriptors.
pub const POOL_MAX: usize = 64;

/// One pipe: what was spliced into `write` is spliced out of `read`.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity in bytes.
    size: usize,
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

impl Pipe {
    fn new(want: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let asked = i32::try_from(want).unwrap_or(i32::MAX);
        let size = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(asked)) {
            Ok(size) => size,
            Err(_) => fcntl(&write, FcntlArg::F_GETPIPE_SZ)?,
        };
        let size = usize::try_from(size).unwrap_or(0).max(4096);
        Ok(Pipe { read, write, size })
    }

    /// Moves what `from` has received (up to the pipe's size) into the empty pipe: the bytes
    /// moved, 0 at the end of the stream, `WouldBlock` when there is nothing to read.
    pub fn fill(&self, from: &TcpStream) -> io::Result<usize> {
        Ok(splice(from, None, &self.write, None, self.size, FLAGS)?)
    }

    /// Moves up to `len` bytes of the pipe into `to`: the bytes moved, `WouldBlock` when its
    /// send buffer is full.
    pub fn drain(&self, to: &TcpStream, len: usize) -> io::Result<usize> {
        Ok(splice(&self.read, None, to, None, len, FLAGS)?)
    }
}

/// Empty pipes to lend, shared by every TCP route listener of a router.
#[derive(Debug)]
pub struct Pipes {
    idle: Mutex<Vec<Pipe>>,
    size: usize,
    keep: usize,
    made: AtomicUsize,
}

impl Default for Pipes {
    fn default() -> Self {
        Pipes::new(PIPE_SIZE, POOL_MAX)
    }
}

impl Pipes {
    /// A pool making pipes of `size` bytes and keeping `keep` idle ones at most.
    pub fn new(size: usize, keep: usize) -> Pipes {
        Pipes {
            idle: Mutex::new(Vec::new()),
            size,
            keep,
            made: AtomicUsize::new(0),
        }
    }

    /// An empty pipe: an idle one, else a new one (which fails when the process is out of
    /// descriptors or the kernel out of memory: the caller copies instead).
    pub fn take(&self) -> io::Result<Pipe> {
        let idle = self.lock().pop();
        match idle {
            Some(pipe) => Ok(pipe),
            None => {
                let pipe = Pipe::new(self.size)?;
                self.made.fetch_add(1, Ordering::Relaxed);
                Ok(pipe)
            }
        }
    }

    /// Takes back a pipe that must be empty (one with bytes left in it would hand them to the
    /// wrong connection: drop it instead).
    pub fn give_back(&self, pipe: Pipe) {
        let mut idle = self.lock();
        if idle.len() < self.keep {
            idle.push(pipe);
        }
    }

    /// Pipes made so far (the pool's and those lent out, closed ones included).
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// Pipes waiting in the pool.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        // A panic while holding the lock cannot leave the vector half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
