//! Where a process type may run, in Flynn's terms:
//!
//! - **Tags.** A host registers tags (`flynn host --tag disk=ssd`, in `<prefix>/hosts/<id>`);
//!   a formation may ask, per process type, for tags its hosts must have (Flynn's formation
//!   `tags`: `{"web": {"disk": "ssd"}}`). A host matches when it has every one of them with the
//!   same value; no tags: every host matches.
//! - **Omni.** A process type with `"omni": true` (Flynn's process type field) runs its count
//!   on every matching host (one job per host for a count of 1), following hosts as they come
//!   and go.
//!
//! Both are checked where they enter (a release's process types, a formation's tags), so the
//! scheduler only ever reads well-formed values; an unexpected one in the store (written by
//! something else) is read as absent.

use std::collections::BTreeMap;

use crate::api::types::{Host, ProcessType, Release};

/// The tags a process type's hosts must have, by process type.
pub type TypeTags = BTreeMap<String, BTreeMap<String, String>>;

/// Most tags a process type may ask for.
const MAX_TAGS: usize = 32;
/// Longest tag key or value.
const MAX_TAG_LEN: usize = 255;

/// Whether `host` has every tag in `tags`.
pub fn matches(tags: &BTreeMap<String, String>, host: &Host) -> bool {
    tags.iter().all(|(k, v)| host.tags.get(k) == Some(v))
}

/// Flynn's `omni` of a process type.
pub fn is_omni(process: &ProcessType) -> bool {
    process
        .extra
        .get("omni")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// Checks the placement fields of a process type of a new release.
pub fn check_process(name: &str, process: &ProcessType) -> Result<(), String> {
    match process.extra.get("omni") {
        None | Some(serde_json::Value::Bool(_)) | Some(serde_json::Value::Null) => Ok(()),
        Some(other) => Err(format!(
            "process type {name:?}: omni must be true or false, not {other}"
        )),
    }
}

/// Checks a formation's tags against its release: each names one of the release's process
/// types, with non-empty keys.
pub fn check_tags(tags: &TypeTags, release: &Release) -> Result<(), String> {
    for (process_type, wanted) in tags {
        if !release.processes.contains_key(process_type) {
            return Err(format!(
                "tags for {process_type:?}: release {} has no such process type",
                release.id
            ));
        }
        if wanted.len() > MAX_TAGS {
            return Err(format!(
                "tags for {process_type:?}: at most {MAX_TAGS} tags"
            ));
        }
        for (key, value) in wanted {
            if key.trim().is_empty() || key.contains('=') {
                return Err(format!(
                    "tags for {process_type:?}: invalid tag key {key:?} (non-empty, no '=')"
                ));
            }
            if key.len() > MAX_TAG_LEN || value.len() > MAX_TAG_LEN {
                return Err(format!(
                    "tags for {process_type:?}: a tag key or value is over {MAX_TAG_LEN} bytes"
                ));
            }
        }
    }
    Ok(())
}

/// `k=v,k2=v2`, for messages.
pub fn describe(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a job of a process type asking for `tags` has no host.
pub fn why_blocked(tags: &BTreeMap<String, String>, hosts: usize) -> String {
    if hosts == 0 {
        "no host is registered".to_owned()
    } else if tags.is_empty() {
        "no host matches".to_owned()
    } else {
        format!(
            "no host has the tags {} (of {hosts} live hosts)",
            describe(tags)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(tags: &[(&str, &str)]) -> Host {
        Host {
            id: "h".to_owned(),
            external_ip: "127.0.0.1".parse().expect("ip"),
            api: String::new(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: Default::default(),
            docker_version: String::new(),
            registered_at: String::new(),
        }
    }

    #[test]
    fn a_host_matches_when_it_has_every_tag() {
        let want: BTreeMap<String, String> = [("disk".to_owned(), "ssd".to_owned())].into();
        assert!(matches(&want, &host(&[("disk", "ssd"), ("zone", "a")])));
        assert!(!matches(&want, &host(&[("disk", "hdd")])));
        assert!(!matches(&want, &host(&[])));
        assert!(matches(&BTreeMap::new(), &host(&[])));
    }

    #[test]
    fn omni_and_its_checks() {
        let mut process = ProcessType::default();
        assert!(!is_omni(&process));
        process
            .extra
            .insert("omni".to_owned(), serde_json::json!(true));
        assert!(is_omni(&process));
        assert!(check_process("web", &process).is_ok());
        process
            .extra
            .insert("omni".to_owned(), serde_json::json!("yes"));
        assert!(!is_omni(&process));
        let e = check_process("web", &process).expect_err("bad omni");
        assert!(e.contains("omni must be true or false"), "{e}");
    }

    #[test]
    fn tags_name_process_types_of_the_release() {
        let release = Release {
            id: "r1".to_owned(),
            app_id: None,
            artifacts: vec![],
            env: Default::default(),
            meta: Default::default(),
            processes: [("web".to_owned(), ProcessType::default())].into(),
            created_at: String::new(),
        };
        let tags = |t: &str, k: &str| -> TypeTags {
            [(t.to_owned(), [(k.to_owned(), "x".to_owned())].into())].into()
        };
        assert!(check_tags(&tags("web", "disk"), &release).is_ok());
        let e = check_tags(&tags("worker", "disk"), &release).expect_err("unknown type");
        assert!(e.contains("has no such process type"), "{e}");
        let e = check_tags(&tags("web", ""), &release).expect_err("empty key");
        assert!(e.contains("invalid tag key"), "{e}");
    }
}
