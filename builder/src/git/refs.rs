//! What a push asks for, and which pushes deploy.
//!
//! `git receive-pack` gives its pre-receive hook one line per ref the push updates,
//! `<old id> <new id> <ref name>`, with the all-zero id for "none" (a new ref, or a deletion).
//! [`parse`] reads those lines (total: every input gives updates or a typed error) and
//! [`deployable`] applies the rule: exactly one update, of `refs/heads/main` or
//! `refs/heads/master`, that does not delete it.

/// One ref a push updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    /// The branch name (`main`), or the whole ref name for anything that is not a branch.
    pub fn short_name(&self) -> &str {
        self.name.strip_prefix("refs/heads/").unwrap_or(&self.name)
    }

    /// Whether the push deletes the ref.
    pub fn is_delete(&self) -> bool {
        is_zero(&self.new)
    }
}

/// Why a push does not deploy; the message is shown to the pusher as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("malformed pre-receive input {0:?} (expected `<old> <new> <ref>`)")]
    Malformed(String),
    #[error("nothing was pushed")]
    Empty,
    #[error(
        "only main or master deploys; refusing {0} (push your branch as main: git push flynn HEAD:main)"
    )]
    NotDeployable(String),
    #[error("deleting {0} is refused: it is the branch the app is built from")]
    Delete(String),
    #[error("push one branch at a time: this push updates {0}")]
    Several(String),
}

/// Parses the pre-receive hook's input. Blank lines are skipped.
pub fn parse(input: &str) -> Result<Vec<RefUpdate>, PushError> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PushError::Malformed(line.to_owned()));
        };
        if !is_object_id(old) || !is_object_id(new) || name.is_empty() || name.contains(' ') {
            return Err(PushError::Malformed(line.to_owned()));
        }
        updates.push(RefUpdate {
            old: old.to_owned(),
            new: new.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(updates)
}

/// The one update that deploys, or why the push is refused.
pub fn deployable(updates: &[RefUpdate]) -> Result<&RefUpdate, PushError> {
    let update = match updates {
        [] => return Err(PushError::Empty),
        [one] => one,
        several => {
            let names: Vec<&str> = several.iter().map(RefUpdate::short_name).collect();
            if let Some(other) = several.iter().find(|u| !is_deploy_branch(&u.name)) {
                return Err(PushError::NotDeployable(other.name.clone()));
            }
            return Err(PushError::Several(names.join(", ")));
        }
    };
    if !is_deploy_branch(&update.name) {
        return Err(PushError::NotDeployable(update.name.clone()));
    }
    if update.is_delete() {
        return Err(PushError::Delete(update.short_name().to_owned()));
    }
    Ok(update)
}

/// `refs/heads/main` or `refs/heads/master`.
pub fn is_deploy_branch(name: &str) -> bool {
    matches!(name, "refs/heads/main" | "refs/heads/master")
}

/// A SHA-1 (40) or SHA-256 (64) object id in lower-case hex.
pub fn is_object_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn main_and_master_deploy() {
        for branch in ["main", "master"] {
            let input = format!("{Z} {A} refs/heads/{branch}\n");
            let updates = parse(&input).expect("parses");
            let update = deployable(&updates).expect("deploys");
            assert_eq!(update.new, A);
            assert_eq!(update.short_name(), branch);
        }
        let updates = parse(&format!("{A} {B} refs/heads/main\r\n\n")).expect("parses");
        assert_eq!(deployable(&updates).expect("deploys").old, A);
    }

    #[test]
    fn other_refs_deletes_and_several_are_refused() {
        let refused = |input: String| deployable(&parse(&input).expect("parses")).unwrap_err();
        assert_eq!(
            refused(format!("{Z} {A} refs/heads/feature")),
            PushError::NotDeployable("refs/heads/feature".to_owned())
        );
        assert_eq!(
            refused(format!("{Z} {A} refs/tags/v1")),
            PushError::NotDeployable("refs/tags/v1".to_owned())
        );
        assert_eq!(
            refused(format!("{A} {Z} refs/heads/main")),
            PushError::Delete("main".to_owned())
        );
        assert_eq!(
            refused(format!(
                "{Z} {A} refs/heads/main\n{Z} {B} refs/heads/master"
            )),
            PushError::Several("main, master".to_owned())
        );
        assert_eq!(
            refused(format!("{Z} {A} refs/heads/main\n{Z} {B} refs/heads/dev")),
            PushError::NotDeployable("refs/heads/dev".to_owned())
        );
        assert_eq!(refused(String::new()), PushError::Empty);
        let message = refused(format!("{Z} {A} refs/heads/dev")).to_string();
        assert!(message.contains("only main or master deploys"), "{message}");
    }

    #[test]
    fn malformed_input_is_an_error() {
        for input in [
            "garbage",
            "1111 2222 refs/heads/main",
            &format!("{A} {B}"),
            &format!("{A} {B} "),
            &format!("{} {B} refs/heads/main", "A".repeat(40)),
            &format!("{A} {B} refs/heads/a b"),
        ] {
            assert!(
                matches!(parse(input), Err(PushError::Malformed(_))),
                "{input:?}"
            );
        }
        let sha256 = "a".repeat(64);
        assert!(parse(&format!("{Z} {sha256} refs/heads/main")).is_ok());
    }
}
