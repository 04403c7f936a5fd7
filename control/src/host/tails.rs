//! The last output of finished jobs, kept by the host agent so that `flynn log` still shows a
//! job whose container was removed (stopped, crashed, or a one-off that ended).
//!
//! Before it removes a job's container, the agent copies the end of its `docker logs` into
//! `<data>/job-logs/<job id>.json` (the job as it ended and its lines). Bounded: at most
//! [`MAX_LINES`] lines and [`MAX_BYTES`] bytes a job (the oldest lines go first), and at most
//! [`MAX_JOBS`] jobs a host (the oldest files go first); so at most a few hundred MiB of disk.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::docker::Engine;
use super::run::{self, LogLine};
use crate::api::types::Job;

/// Lines kept per job.
pub const MAX_LINES: u64 = 1000;
/// Bytes of text kept per job.
pub const MAX_BYTES: usize = 256 << 10;
/// Finished jobs kept per host.
pub const MAX_JOBS: usize = 500;

/// A finished job and the end of its output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tail {
    pub job: Job,
    pub lines: Vec<LogLine>,
}

/// Where a host agent keeps its finished jobs' output.
#[derive(Clone, Debug)]
pub struct Tails {
    dir: PathBuf,
}

impl Tails {
    pub fn new(dir: PathBuf) -> Tails {
        Tails { dir }
    }

    fn path(&self, job_id: &str) -> Option<PathBuf> {
        // Ids are uuids; anything else never names a file here.
        let safe = !job_id.is_empty()
            && job_id.len() <= 100
            && job_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        safe.then(|| self.dir.join(format!("{job_id}.json")))
    }

    /// Copies the end of `container`'s output, with `job` as it ended. Logged, never failing:
    /// the container goes anyway.
    pub async fn save(&self, engine: &Engine, job: &Job, container: &str) {
        let Some(path) = self.path(&job.id) else {
            return;
        };
        let lines: Vec<LogLine> = run::logs(engine, container, false, Some(MAX_LINES))
            .collect()
            .await;
        let tail = Tail {
            job: job.clone(),
            lines: bounded(lines, MAX_BYTES),
        };
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || write(&dir, &path, &tail)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(job = %job.id, error = %e, "cannot keep a job's output"),
            Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot keep a job's output"),
        }
    }

    /// The kept output of a job, if any.
    pub async fn read(&self, job_id: &str) -> Option<Tail> {
        let path = self.path(job_id)?;
        let bytes = tokio::fs::read(&path).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The finished jobs of an app kept here (their records, without the lines).
    pub async fn jobs_of(&self, app_id: &str) -> Vec<Job> {
        let dir = self.dir.clone();
        let app_id = app_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|bytes| serde_json::from_slice::<Tail>(&bytes).ok())
                .map(|t| t.job)
                .filter(|j| j.app_id == app_id)
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// The newest lines whose text fits in `max` bytes.
fn bounded(mut lines: Vec<LogLine>, max: usize) -> Vec<LogLine> {
    let mut total = 0;
    let mut keep = lines.len();
    for line in lines.iter().rev() {
        let size = line.msg.len() + line.time.len() + line.stream.len();
        if total + size > max {
            break;
        }
        total += size;
        keep -= 1;
    }
    lines.split_off(keep)
}

/// Writes `tail` (through a temporary file, renamed), then removes the oldest files past
/// [`MAX_JOBS`].
fn write(dir: &Path, path: &Path, tail: &Tail) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(tail).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)?;
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() > MAX_JOBS {
        files.sort();
        for (_, old) in &files[..files.len() - MAX_JOBS] {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(msg: &str) -> LogLine {
        LogLine {
            time: "t".to_owned(),
            stream: "stdout".to_owned(),
            msg: msg.to_owned(),
        }
    }

    #[test]
    fn keeps_the_newest_lines_that_fit() {
        let lines = vec![line("aaaa"), line("bbbb"), line("cccc")];
        // Each line: 4 + 1 + 6 = 11 bytes.
        let kept = bounded(lines.clone(), 22);
        let msgs: Vec<&str> = kept.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs, ["bbbb", "cccc"]);
        assert_eq!(bounded(lines.clone(), 1000).len(), 3);
        assert!(bounded(lines, 5).is_empty());
    }

    #[test]
    fn only_ids_name_files() {
        let tails = Tails::new(PathBuf::from("/x"));
        assert!(tails.path("0b9e-12_ab").is_some());
        assert!(tails.path("../etc/passwd").is_none());
        assert!(tails.path("").is_none());
    }

    #[test]
    fn keeps_at_most_max_jobs_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tails = Tails::new(dir.path().to_path_buf());
        let job = |id: &str| Job {
            id: id.to_owned(),
            app_id: "a".to_owned(),
            app_name: "a".to_owned(),
            release_id: "r".to_owned(),
            process_type: "web".to_owned(),
            host_id: "h".to_owned(),
            ..Job::default()
        };
        for n in 0..MAX_JOBS + 3 {
            let id = format!("j{n}");
            let tail = Tail {
                job: job(&id),
                lines: vec![line("x")],
            };
            let path = tails.path(&id).expect("path");
            write(dir.path(), &path, &tail).expect("write");
        }
        let count = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(count, MAX_JOBS);
    }
}
