//! Shared strings: a route's service, path and certificate id are [`Name`]s, one allocation
//! per distinct value however many routes name it (a million routes over a thousand services
//! hold a thousand service strings, and one `/`).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

/// An immutable, cheaply cloned string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn new(text: &str) -> Name {
        Name(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name(Arc::from(text))
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

/// Most distinct names kept before the unused ones are dropped.
const PRUNE_AT: usize = 1 << 16;

/// Hands out one [`Name`] per distinct string. Shared by every copy of a table (only the writer
/// uses it); names no route holds any more are dropped now and then.
#[derive(Clone, Default)]
pub struct Interner(Arc<Mutex<Names>>);

#[derive(Default)]
struct Names {
    set: HashSet<Name>,
    prune_at: usize,
}

impl Interner {
    /// The shared name equal to `name`.
    pub fn intern(&self, name: &Name) -> Name {
        self.intern_with(name.as_str(), || name.clone())
    }

    /// The shared name equal to `text` (a copy of it only the first time).
    pub fn intern_str(&self, text: &str) -> Name {
        self.intern_with(text, || Name::new(text))
    }

    fn intern_with(&self, text: &str, make: impl FnOnce() -> Name) -> Name {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = names.set.get(text) {
            return shared.clone();
        }
        let name = make();
        if names.set.len() >= names.prune_at.max(PRUNE_AT) {
            // Only the interner holds it: no route names it any more.
            names.set.retain(|n| Arc::strong_count(&n.0) > 1);
            names.prune_at = names.set.len() * 2;
        }
        names.set.insert(name.clone());
        name
    }
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interner")
    }
}
