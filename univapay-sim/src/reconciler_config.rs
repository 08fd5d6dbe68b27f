//! A ready konbini-reconciler config for a running simulator (`univapay-sim
//! --write-config PATH`), so trying the reconciler by hand needs no edit of the
//! repository's `config.toml` and no look into the source for the credentials.
//!
//! The file holds the secret inline, so it is written with mode 0600 whatever the umask:
//! the reconciler warns about an inline secret that group or others can read, and a
//! config for trying things should not teach ignoring that warning.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Credentials;

#[derive(Serialize)]
struct ReconcilerConfig<'a> {
    api: Api<'a>,
    database: Database,
}

#[derive(Serialize)]
struct Api<'a> {
    base_url: &'a str,
    secret: &'a str,
    app_token: &'a str,
}

#[derive(Serialize)]
struct Database {
    path: PathBuf,
}

/// Writes to `path` a konbini-reconciler config whose `api.base_url` is `base_url`, with
/// the simulator's `credentials`, and a ledger `ledger.db` beside the file (an absolute
/// path, so the reconciler finds the same ledger from any working directory). Returns
/// the ledger's path.
///
/// The file is written whole to a temporary file (mode 0600) in the same directory and
/// renamed over `path`, so a reader never sees half of it and a file that was there
/// before, whatever its mode, is replaced.
pub fn write_reconciler_config(
    path: &Path,
    base_url: &str,
    credentials: &Credentials,
) -> io::Result<PathBuf> {
    let path = std::path::absolute(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let ledger = dir.join("ledger.db");
    let config = ReconcilerConfig {
        api: Api {
            base_url,
            secret: &credentials.secret,
            app_token: &credentials.app_token,
        },
        database: Database {
            path: ledger.clone(),
        },
    };
    let text = toml::to_string(&config).map_err(io::Error::other)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(
                b"# Written by univapay-sim --write-config for the simulator at this address.\n",
            )?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| ledger)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-config-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_a_private_config_naming_the_address_credentials_and_ledger() {
        let dir = temp_dir("write");
        let path = dir.join("try.toml");
        // A file left world-readable by an earlier run is replaced, not reused.
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let creds = Credentials {
            secret: "s\"e\\cret".into(),
            app_token: "tok".into(),
        };

        let ledger = write_reconciler_config(&path, "http://127.0.0.1:4711", &creds).unwrap();

        assert_eq!(ledger, dir.join("ledger.db"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let value: toml::Table = text.parse().unwrap();
        assert_eq!(
            value["api"]["base_url"].as_str(),
            Some("http://127.0.0.1:4711")
        );
        assert_eq!(value["api"]["secret"].as_str(), Some("s\"e\\cret"));
        assert_eq!(value["api"]["app_token"].as_str(), Some("tok"));
        let db = dir.join("ledger.db");
        assert_eq!(value["database"]["path"].as_str(), db.to_str());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_does_not_exist_is_an_error() {
        let dir = temp_dir("missing");
        let path = dir.join("no-such-dir").join("try.toml");
        let err = write_reconciler_config(&path, "http://127.0.0.1:1", &Credentials::default());
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }
}
