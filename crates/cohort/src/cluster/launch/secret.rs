//! The job secret of processes started by a launcher: every rank must know the same one, because a launcher cannot
//! hand it over a pipe as the master does for its own workers. It comes from a file on a shared file system
//! (`--secret-file`, or `COHORT_SECRET_FILE`) or from `COHORT_SECRET`, which launchers copy into every rank's
//! environment. Either way it is 64 hex digits (`openssl rand -hex 32`), and it never crosses a cohort connection:
//! ranks prove they know it by HMAC.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::LaunchError;
use crate::cluster::process::SECRET_ENV;
use crate::wire::handshake::{HandshakeError, Secret};

/// Environment variable naming a file that holds the job secret (an alternative to `COHORT_SECRET`).
pub const SECRET_FILE_ENV: &str = "COHORT_SECRET_FILE";

/// How to make a secret, for messages.
pub const SECRET_HOWTO: &str = "export COHORT_SECRET=$(openssl rand -hex 32) before starting the launcher (it passes \
     the environment to every rank), or write it to a file on a shared file system (umask 077; openssl rand -hex 32 \
     > FILE) and pass --secret-file FILE";

/// The secret from `file` (a `--secret-file` flag), else `COHORT_SECRET_FILE`, else `COHORT_SECRET`; `Ok(None)` when
/// none is given.
pub fn load(file: Option<&Path>) -> Result<Option<Secret>, LaunchError> {
    load_from(file, &|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
}

/// [`load`] with the environment given as a function (for tests).
pub fn load_from(file: Option<&Path>, get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Secret>, LaunchError> {
    if let Some(path) = file {
        return read_file(path).map(Some);
    }
    if let Some(path) = get(SECRET_FILE_ENV).filter(|p| !p.trim().is_empty()) {
        return read_file(&PathBuf::from(path.trim())).map(Some);
    }
    match get(SECRET_ENV).filter(|s| !s.trim().is_empty()) {
        Some(hex) => Secret::from_hex(&hex)
            .map(Some)
            .map_err(|e| LaunchError::BadSecret { origin: SECRET_ENV.into(), reason: hex_reason(e) }),
        None => Ok(None),
    }
}

/// Whether a secret is given in the environment (a file or the value).
pub fn in_env(get: &dyn Fn(&str) -> Option<String>) -> bool {
    [SECRET_FILE_ENV, SECRET_ENV].iter().any(|n| get(n).is_some_and(|v| !v.trim().is_empty()))
}

/// Reads a secret file: 64 hex digits, readable by its owner only.
pub fn read_file(path: &Path) -> Result<Secret, LaunchError> {
    let origin = format!("secret file {}", path.display());
    let bad = |reason: String| LaunchError::BadSecret { origin: origin.clone(), reason };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "it is readable by other users (mode {mode:03o}), who could then join the job: chmod 600 {}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    Secret::from_hex(text.trim()).map_err(|e| bad(hex_reason(e)))
}

fn hex_reason(e: HandshakeError) -> String {
    let e = match e {
        HandshakeError::BadSecret(reason) => reason,
        other => other.to_string(),
    };
    format!("{e}; a job secret is 64 hex digits, e.g. from `openssl rand -hex 32`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn get(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn a_secret_comes_from_the_flag_then_the_file_variable_then_the_value() {
        let (a, b, c) = (Secret::generate(), Secret::generate(), Secret::generate());
        let fa = file(&format!("{}\n", a.to_hex()), 0o600);
        let fb = file(&b.to_hex(), 0o400);
        let path_b = fb.path().display().to_string();
        let env = get(&[(SECRET_FILE_ENV, &path_b), (SECRET_ENV, &c.to_hex())]);
        assert_eq!(load_from(Some(fa.path()), &env).unwrap(), Some(a));
        assert_eq!(load_from(None, &env).unwrap(), Some(b));
        assert_eq!(load_from(None, &get(&[(SECRET_ENV, &c.to_hex())])).unwrap(), Some(c));
        assert_eq!(load_from(None, &get(&[(SECRET_ENV, " ")])).unwrap(), None);
        assert!(in_env(&env) && !in_env(&get(&[])));
    }

    #[test]
    fn bad_secrets_say_where_they_came_from_and_how_to_fix_them() {
        let e = load_from(None, &get(&[(SECRET_ENV, "abc")])).unwrap_err().to_string();
        assert!(e.contains("COHORT_SECRET") && e.contains("openssl rand -hex 32"), "{e}");
        let open = file(&Secret::generate().to_hex(), 0o644);
        let e = read_file(open.path()).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        let garbage = file("not hex at all", 0o600);
        assert!(read_file(garbage.path()).unwrap_err().to_string().contains("64 hex digits"));
        let e = read_file(Path::new("/nonexistent/secret")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/secret") && e.contains("cannot read"), "{e}");
    }
}
