//! A secret string (an etcd password) that never prints: `Debug` shows `<redacted>`, there is
//! no `Display`, and the value is reached only through [`Secret::expose`] where it is sent.

use serde::Deserialize;

#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// For clap: a `--password` flag parses straight into a `Secret`, so the parsed arguments
/// never hold it in a printable `String`.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// Once a private key is in memory (an age identity, a signing key), the process may not dump
/// core (a core file would hold the key, readable wherever cores go) and other processes of the
/// same user may not attach to it or read its memory: `PR_SET_DUMPABLE` 0 does both. For the
/// rest of the process's life: there is no safe moment to turn it back on.
pub fn no_core_dumps() {
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "could not disable core dumps while a private key is loaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
