//! What `flynn server` prepares before it serves: the data directory, the store URL, the
//! controller key, the client config, the default TLS certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::config::{self, Cluster, Config};

/// `--data`, else `$XDG_DATA_HOME/flynn`, else `~/.local/share/flynn`; created if missing.
pub fn data_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_path_buf(),
        None => {
            let xdg = std::env::var_os("XDG_DATA_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from);
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"));
            xdg.or(home)
                .context("no data directory: set --data, FLYNN_DATA or HOME")?
                .join("flynn")
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    Ok(dir)
}

/// `embedded` is the store file in the data directory; anything else is a store URL.
pub fn store_url(store: &str, data: &Path) -> String {
    if store == "embedded" {
        format!("file://{}", data.join("store.redb").display())
    } else {
        store.to_owned()
    }
}

/// The key in `<data>/controller.key`, generated (random, 256 bits) on first start.
pub fn controller_key(data: &Path) -> anyhow::Result<String> {
    let path = data.join("controller.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the controller key");
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// The URL clients use: a wildcard listen address is reached on loopback.
pub fn controller_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{ip}:{}", addr.port())
}

/// Adds (or refreshes) this server's cluster in the client config, and makes it the default
/// unless another cluster already is.
pub fn write_client_config(
    name: &str,
    controller_url: &str,
    key: &str,
    router_url: Option<String>,
) -> anyhow::Result<()> {
    let path = config::path()?;
    let mut config = Config::load(&path)?;
    let cluster = Cluster {
        name: name.to_owned(),
        controller_url: controller_url.to_owned(),
        key: key.to_owned(),
        git_url: None,
        tls_pin: None,
        router_url,
    };
    match config.find(name) {
        Some(existing) if existing == &cluster && !config.default.is_empty() => return Ok(()),
        // Another cluster of that name (not an earlier run of this server): keep it.
        Some(existing) if existing.key != key && existing.controller_url != controller_url => {
            tracing::warn!(path = %path.display(), cluster = name, url = %existing.controller_url,
                "the client config already has another cluster of this name; not replacing it \
                 (use --cluster-name, or `flynn cluster add`)");
            return Ok(());
        }
        _ => {}
    }
    config.add(cluster, true)?;
    let default_missing = config.default.is_empty() || config.find(&config.default).is_none();
    if default_missing {
        config.default = name.to_owned();
    }
    config.save(&path)?;
    if config.default == name {
        tracing::info!(path = %path.display(), cluster = name, "wrote the client config: `flynn` talks to this server");
    } else {
        tracing::info!(path = %path.display(), cluster = name, default = %config.default,
            "added this server to the client config; use `flynn -c {name}` or `flynn cluster default {name}`");
    }
    Ok(())
}
