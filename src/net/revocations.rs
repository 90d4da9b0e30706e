//! The revocation set behind `POST/DELETE /api/revocations`: kept in memory, mirrored in
//! `[auth] revocations_file` (JSON, written to a temporary file and renamed, so a crash leaves
//! the old or the new file, never half of one), read again on SIGHUP and at start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde_json::json;
use turnd_proto::auth::{Revocations, Revoked};

/// The current set and where it is stored.
pub struct RevocationStore {
    path: Mutex<Option<PathBuf>>,
    set: Mutex<Arc<Revocations>>,
}

impl RevocationStore {
    /// The store for `path`, loaded from it (a missing file is an empty set).
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let set = match path {
            Some(p) => read(p)?,
            None => Revocations::new(),
        };
        Ok(RevocationStore {
            path: Mutex::new(path.map(Path::to_path_buf)),
            set: Mutex::new(Arc::new(set)),
        })
    }

    /// The set in force.
    pub fn current(&self) -> Arc<Revocations> {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Read the file again (SIGHUP), possibly a new one; on error nothing changes.
    pub fn reload(&self, path: Option<&Path>) -> anyhow::Result<()> {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = path {
            *set = Arc::new(read(p)?);
        }
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path.map(Path::to_path_buf);
        Ok(())
    }

    /// Apply `change` (with ended revocations pruned at `unix_now`), store the result, and
    /// return it. On a write error nothing changes.
    pub fn change(
        &self,
        unix_now: u64,
        change: impl FnOnce(&mut Revocations) -> bool,
    ) -> anyhow::Result<(Arc<Revocations>, bool)> {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (**set).clone();
        next.prune(unix_now);
        let changed = change(&mut next);
        if let Some(p) = &*self.path.lock().unwrap_or_else(|e| e.into_inner()) {
            write(p, &next)?;
        }
        *set = Arc::new(next);
        Ok((set.clone(), changed))
    }
}

/// The JSON form: `{"revocations": [{"username"|"user": name, "until": unix}]}`.
pub fn to_json(set: &Revocations) -> serde_json::Value {
    let mut list: Vec<serde_json::Value> = set
        .iter()
        .map(|(what, until)| match what {
            Revoked::Username(n) => json!({ "username": n, "until": until }),
            Revoked::User(n) => json!({ "user": n, "until": until }),
        })
        .collect();
    list.sort_by_key(|v| v.to_string());
    json!({ "revocations": list })
}

fn read(path: &Path) -> anyhow::Result<Revocations> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Revocations::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let mut set = Revocations::new();
    let list = v["revocations"]
        .as_array()
        .with_context(|| format!("{}: no \"revocations\" list", path.display()))?;
    for e in list {
        let until = e["until"]
            .as_u64()
            .with_context(|| format!("{}: an entry without \"until\"", path.display()))?;
        let what = match (e["username"].as_str(), e["user"].as_str()) {
            (Some(n), None) => Revoked::Username(n.to_string()),
            (None, Some(n)) => Revoked::User(n.to_string()),
            _ => anyhow::bail!(
                "{}: each entry names one \"username\" or \"user\"",
                path.display()
            ),
        };
        set.insert(what, until);
    }
    Ok(set)
}

fn write(path: &Path, set: &Revocations) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(&to_json(set))?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.json");
        let store = RevocationStore::open(Some(&path)).unwrap();
        assert!(store.current().is_empty(), "a missing file is an empty set");
        store
            .change(100, |s| {
                s.insert(Revoked::User("alice".into()), 500);
                s.insert(Revoked::Username("9:bob".into()), 50);
                true
            })
            .unwrap();
        let again = RevocationStore::open(Some(&path)).unwrap();
        assert_eq!(*again.current(), *store.current());
        assert!(again.current().is_revoked("1:alice", "alice", 100));
        // Pruned at the next change: 9:bob ended at 50.
        let (set, changed) = store
            .change(100, |s| s.remove(&Revoked::User("x".into())))
            .unwrap();
        assert!(!changed);
        assert_eq!(set.len(), 1);
        assert!(!dir.path().join("rev.tmp").exists());
        std::fs::write(&path, "{not json").unwrap();
        assert!(store.reload(Some(&path)).is_err());
        assert_eq!(store.current().len(), 1, "a bad file changes nothing");
    }
}
