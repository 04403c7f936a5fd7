//! A process a test (or a benchmark) runs: its stdout and stderr in `log` in its own
//! directory, SIGKILLed when dropped.

use std::process::{Child, Command, Stdio};

/// A child process with its log in its own directory, SIGKILLed when dropped.
pub struct Proc {
    child: Child,
    /// Its directory: `log`, and whatever the command was told to keep there.
    pub dir: tempfile::TempDir,
}

impl Proc {
    /// Starts `command` with stdin closed and stdout and stderr in `<dir>/log`, `PATH` kept (a
    /// command that cleared its environment still finds `docker`, `git`, ...). Panics when it
    /// cannot start.
    pub fn spawn(mut command: Command, dir: tempfile::TempDir) -> Proc {
        let log = std::fs::File::create(dir.path().join("log")).expect("create the log");
        let child = command
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("open the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Proc { child, dir }
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
