//! The process's limits: file descriptors.

/// Raises the soft limit on open files to the hard one (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do; systemd and Docker start processes at 1024 soft) and returns the
/// limit in force.
pub fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}
