//! One more layer on an image in the engine, through `docker load` (`POST /images/load`).
//!
//! The archive is what `docker save` writes, less the base's layers: a `manifest.json`
//! naming the tag, the image's config (the base's, edited) and its layers; the engine has
//! the base's layers already (by their chain of diff ids) and reads only the new one's file.
//! Unlike a container committed (which, on a storage driver without native diffs such as
//! fuse-overlayfs, walks the whole image to find what changed: seconds on top of the stack),
//! this costs what extracting the new layer costs.

use std::time::SystemTime;

use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use ring::digest::{digest, SHA256};
use serde_json::{json, Value};

use crate::context::Tar;
use crate::engine::engine_error;
use crate::BuildError;

/// The sha256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads `base` + `layer` (an uncompressed tar) as `tag`, its container config the base's
/// changed by `edit` (e.g. `{"User": …, "Env": […]}`); the new image's id.
pub async fn layer_on(
    docker: &Docker,
    base: &str,
    layer: Vec<u8>,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> Result<String, BuildError> {
    let inspect = docker.inspect_image(base).await.map_err(engine_error)?;
    let mut diff_ids = inspect
        .root_fs
        .and_then(|r| r.layers)
        .ok_or_else(|| BuildError::Docker(format!("the image {base} has no layers")))?;
    let base_layers = diff_ids.len();
    let diff_id = sha256_hex(&layer);
    diff_ids.push(format!("sha256:{diff_id}"));
    let mut config = match serde_json::to_value(inspect.config.unwrap_or_default()) {
        Ok(Value::Object(config)) => config,
        _ => serde_json::Map::new(),
    };
    edit(&mut config);
    let image = json!({
        "architecture": inspect.architecture.unwrap_or_else(|| "amd64".to_owned()),
        "os": inspect.os.unwrap_or_else(|| "linux".to_owned()),
        "created": humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let image = serde_json::to_vec(&image).map_err(|e| BuildError::Docker(e.to_string()))?;
    let config_file = format!("{}.json", sha256_hex(&image));
    // The base's layer files are named but absent: the engine has those layers.
    let mut layer_files: Vec<String> = (0..base_layers)
        .map(|i| format!("base-{i}/layer.tar"))
        .collect();
    let layer_file = format!("{diff_id}/layer.tar");
    layer_files.push(layer_file.clone());
    let manifest = json!([{
        "Config": config_file,
        "RepoTags": [tag],
        "Layers": layer_files,
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(|e| BuildError::Docker(e.to_string()))?;
    let archive = tokio::task::spawn_blocking(move || {
        let mut tar = Tar::new();
        tar.file("manifest.json", &manifest, 0o644, 0)?;
        tar.file(&config_file, &image, 0o644, 0)?;
        tar.file(&layer_file, &layer, 0o644, 0)?;
        tar.finish()
    })
    .await
    .map_err(|e| BuildError::Source(e.to_string()))?
    .map_err(|e| BuildError::Source(format!("the image archive: {e}")))?;
    let options = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut loading = docker.import_image(options, bollard::body_full(archive.into()), None);
    while let Some(message) = loading.next().await {
        message.map_err(|e| BuildError::Docker(format!("loading {tag}: {e}")))?;
    }
    let loaded = docker.inspect_image(tag).await.map_err(engine_error)?;
    loaded
        .id
        .ok_or_else(|| BuildError::Docker(format!("the image {tag} has no id")))
}

/// Sets `KEY=value` in a config's `Env`, replacing any `KEY=` already there.
pub fn set_env(config: &mut serde_json::Map<String, Value>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    let mut env: Vec<Value> = match config.remove("Env") {
        Some(Value::Array(env)) => env
            .into_iter()
            .filter(|v| !v.as_str().is_some_and(|s| s.starts_with(&prefix)))
            .collect(),
        _ => Vec::new(),
    };
    env.push(Value::String(format!("{prefix}{value}")));
    config.insert("Env".to_owned(), Value::Array(env));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_replaced_not_doubled() {
        let mut config = serde_json::Map::new();
        config.insert("Env".to_owned(), json!(["PATH=/usr/bin", "HOME=/root"]));
        set_env(&mut config, "HOME", "/app");
        assert_eq!(config["Env"], json!(["PATH=/usr/bin", "HOME=/app"]));
        let mut empty = serde_json::Map::new();
        set_env(&mut empty, "HOME", "/app");
        assert_eq!(empty["Env"], json!(["HOME=/app"]));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
