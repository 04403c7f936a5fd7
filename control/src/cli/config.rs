//! `~/.flynnrc`: the clusters the CLI knows, in Flynn's TOML layout.
//!
//! ```toml
//! default = "default"
//!
//! [[cluster]]
//! Name = "default"
//! ControllerURL = "http://127.0.0.1:8081"
//! Key = "..."
//! ```
//! `$FLYNNRC` names another file; otherwise it lives in `$HOME`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default: String,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<Cluster>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "ControllerURL")]
    pub controller_url: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "GitURL", default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    #[serde(rename = "TLSPin", default, skip_serializing_if = "Option::is_none")]
    pub tls_pin: Option<String>,
    /// Where the cluster's router serves HTTP, for the web URLs `flynn info` shows
    /// (`flynn server` writes it).
    #[serde(rename = "RouterURL", default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
}

/// Where the config lives: `$FLYNNRC`, else `$HOME/.flynnrc`.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLYNNRC").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
        .context("cannot find the home directory: set $HOME (or $FLYNNRC)")?;
    Ok(home.join(".flynnrc"))
}

impl Config {
    /// Reads the config; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("{} is not a valid flynnrc", path.display()))
    }

    /// Writes the config (readable by its owner only: it holds keys).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("cannot encode the config")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        write_private(&tmp, text.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn find(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The cluster to talk to: `name` if given, else the default, else the only one.
    pub fn select(&self, name: Option<&str>) -> anyhow::Result<&Cluster> {
        if let Some(name) = name {
            return self
                .find(name)
                .with_context(|| format!("cluster {name:?} not found (see `flynn cluster`)"));
        }
        if !self.default.is_empty() {
            return self.find(&self.default).with_context(|| {
                format!(
                    "the default cluster {:?} is not configured (see `flynn cluster`)",
                    self.default
                )
            });
        }
        match self.clusters.as_slice() {
            [only] => Ok(only),
            [] => bail!(
                "no cluster configured: start one with `flynn server`, or add one with \
                 `flynn cluster add NAME URL KEY`"
            ),
            _ => bail!(
                "several clusters and no default: pick one with -c CLUSTER or `flynn cluster default NAME`"
            ),
        }
    }

    /// Adds a cluster; with `force`, replaces one with the same name or URL.
    pub fn add(&mut self, cluster: Cluster, force: bool) -> anyhow::Result<()> {
        let clash =
            |c: &Cluster| c.name == cluster.name || c.controller_url == cluster.controller_url;
        if let Some(existing) = self.clusters.iter().find(|c| clash(c)) {
            if !force {
                if existing.name == cluster.name {
                    bail!(
                        "cluster {:?} already exists (use -f to replace it)",
                        cluster.name
                    );
                }
                bail!(
                    "cluster {:?} already has the URL {} (use -f to replace it)",
                    existing.name,
                    cluster.controller_url
                );
            }
        }
        self.clusters.retain(|c| !clash(c));
        self.clusters.push(cluster);
        Ok(())
    }

    /// Removes a cluster (and the default, if it was the default).
    pub fn remove(&mut self, name: &str) -> anyhow::Result<Cluster> {
        let index = self
            .clusters
            .iter()
            .position(|c| c.name == name)
            .with_context(|| format!("cluster {name:?} not found (see `flynn cluster`)"))?;
        if self.default == name {
            self.default.clear();
        }
        Ok(self.clusters.remove(index))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, url: &str) -> Cluster {
        Cluster {
            name: name.into(),
            controller_url: url.into(),
            key: "k".into(),
            git_url: None,
            tls_pin: None,
            router_url: None,
        }
    }

    #[test]
    fn reads_flynns_layout() {
        let text = r#"
default = "prod"

[[cluster]]
  Name = "prod"
  Key = "secret"
  TLSPin = "abc="
  ControllerURL = "https://controller.example.com"
  GitURL = "https://git.example.com"
"#;
        let config: Config = toml::from_str(text).expect("parses");
        assert_eq!(config.default, "prod");
        let prod = config.select(None).expect("default");
        assert_eq!(prod.controller_url, "https://controller.example.com");
        assert_eq!(prod.tls_pin.as_deref(), Some("abc="));
    }

    #[test]
    fn add_select_remove() {
        let mut config = Config::default();
        assert!(config.select(None).is_err());
        config.add(cluster("a", "http://a"), false).expect("add");
        assert_eq!(config.select(None).expect("only").name, "a");
        config.add(cluster("b", "http://b"), false).expect("add");
        assert!(config.select(None).is_err());
        assert_eq!(config.select(Some("b")).expect("b").name, "b");
        assert!(config.add(cluster("a", "http://c"), false).is_err());
        assert!(config.add(cluster("c", "http://a"), false).is_err());
        config.add(cluster("c", "http://a"), true).expect("forced");
        assert!(config.find("a").is_none());
        config.default = "c".into();
        config.remove("c").expect("remove");
        assert!(config.default.is_empty());
        assert!(config.remove("c").is_err());
        let text = toml::to_string(&config).expect("encode");
        assert_eq!(toml::from_str::<Config>(&text).expect("decode"), config);
    }
}
