//! wrk (the HTTP load generator) against one host through a router, until
//! [`Wrk::finish`], and what it reported.

use std::process::{Child, Command, Stdio};

/// A running wrk, killed when dropped unfinished.
pub struct Wrk {
    child: Option<Child>,
    _script: Option<tempfile::NamedTempFile>,
}

/// What wrk reported.
#[derive(Debug)]
pub struct WrkReport {
    pub requests: u64,
    /// "Non-2xx or 3xx responses".
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    pub text: String,
}

impl Wrk {
    /// `wrk -t1 -c8` against `http://<addr>/` with `Host: <host>`, as fast as it goes.
    pub fn start(addr: &str, host: &str) -> Wrk {
        Wrk::spawn(addr, host, 8, None)
    }

    /// With `connections` connections, each waiting `pause_ms` after every answer (a `delay`
    /// in a wrk script), so that a loaded machine still has CPU for what is watched.
    pub fn paced(addr: &str, host: &str, connections: u32, pause_ms: u32) -> Wrk {
        Wrk::spawn(addr, host, connections, Some(pause_ms))
    }

    /// Panics when wrk cannot run.
    fn spawn(addr: &str, host: &str, connections: u32, pause_ms: Option<u32>) -> Wrk {
        let mut command = Command::new("wrk");
        command
            .args(["-t1", "-c", &connections.to_string()])
            .args(["-d600s", "--timeout", "5s"])
            .args(["-H", &format!("Host: {host}")]);
        let script = pause_ms.map(|ms| {
            let script = tempfile::Builder::new()
                .suffix(".lua")
                .tempfile()
                .expect("wrk script");
            std::fs::write(
                script.path(),
                format!("function delay()\n  return {ms}\nend\n"),
            )
            .expect("write the wrk script");
            command.arg("-s").arg(script.path());
            script
        });
        let child = command
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run wrk ({e}): install it with `apt-get install wrk`")
            });
        Wrk {
            child: Some(child),
            _script: script,
        }
    }

    /// Stops wrk (SIGINT: it prints its report) and reads its report.
    pub fn finish(mut self) -> WrkReport {
        let child = self.child.take().expect("wrk runs until finished");
        // A positive pid: only wrk gets the signal.
        Command::new("kill")
            .args(["-s", "INT", "--", &child.id().to_string()])
            .status()
            .expect("kill -s INT wrk");
        let out = child.wait_with_output().expect("wrk's output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        WrkReport::parse(text)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl WrkReport {
    /// Reads wrk's report (a count it does not print is 0).
    pub fn parse(text: String) -> WrkReport {
        let number_after = |label: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.trim().split([' ', ',']).next()?.parse().ok())
                .unwrap_or(0)
        };
        // "  12345 requests in 10.00s, 1.2MB read"
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        // "Socket errors: connect 0, read 1, write 0, timeout 0"
        let socket_errors = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|rest| {
                rest.split(',')
                    .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        WrkReport {
            requests,
            non_2xx: number_after("Non-2xx or 3xx responses:"),
            socket_errors,
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WrkReport;

    #[test]
    fn reads_the_counts_of_a_report() {
        let text = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  \
                    12345 requests in 2.00s, 1.20MB read\n  Socket errors: connect 1, read 2, \
                    write 0, timeout 4\n  Non-2xx or 3xx responses: 17\nRequests/sec: 6172.50\n";
        let report = WrkReport::parse(text.to_owned());
        assert_eq!(
            (report.requests, report.non_2xx, report.socket_errors),
            (12345, 17, 7)
        );
        let clean = WrkReport::parse("  99 requests in 1.00s, 9KB read\n".to_owned());
        assert_eq!(
            (clean.requests, clean.non_2xx, clean.socket_errors),
            (99, 0, 0)
        );
    }
}
