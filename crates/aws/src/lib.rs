//! AWS credentials, found the way AWS's own tools look first: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`) under `AWS_PROFILE` (`default`).
//!
//! Two parts of jobstream need them: MQTT over WebSockets signed with SigV4 (the bridge), and
//! Parquet written to S3 (the sink, whose object-store client reads the environment, web
//! identity and instance metadata itself but no shared credentials file).

use std::fmt;
use std::path::PathBuf;

/// An access key, its secret and, for temporary credentials, the session token. `Debug`
/// shows the key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl AwsCredentials {
    /// Credentials given directly.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        AwsCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        }
    }

    /// From the environment, else the shared credentials file (see the crate's docs).
    ///
    /// # Errors
    /// [`CredentialsError::NoCredentials`] when neither has them,
    /// [`CredentialsError::CredentialsFile`] when the file named by
    /// `AWS_SHARED_CREDENTIALS_FILE` cannot be read.
    pub fn from_environment() -> Result<Self, CredentialsError> {
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(AwsCredentials::new(id, secret, var("AWS_SESSION_TOKEN")));
        }
        Self::from_shared_file()?.ok_or_else(|| CredentialsError::NoCredentials {
            profile: profile_name(),
        })
    }

    /// The `AWS_PROFILE` (`default`) section of the shared credentials file, if it has one.
    ///
    /// # Errors
    /// [`CredentialsError::CredentialsFile`] when the file named by
    /// `AWS_SHARED_CREDENTIALS_FILE` cannot be read (a missing `~/.aws/credentials` is no error).
    pub fn from_shared_file() -> Result<Option<Self>, CredentialsError> {
        let (path, named) = match var("AWS_SHARED_CREDENTIALS_FILE") {
            Some(path) => (Some(PathBuf::from(path)), true),
            None => (
                var("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")),
                false,
            ),
        };
        let Some(path) = path else {
            return Ok(None);
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self::from_profile(&text, &profile_name())),
            Err(source) if named => Err(CredentialsError::CredentialsFile { path, source }),
            Err(_) => Ok(None),
        }
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// The `[profile]` section of a shared credentials file.
    fn from_profile(text: &str, profile: &str) -> Option<Self> {
        let mut in_profile = false;
        let (mut id, mut secret, mut token) = (None, None, None);
        for line in text.lines().map(str::trim) {
            if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                in_profile = section.trim() == profile;
            } else if let (true, Some((key, value))) = (in_profile, line.split_once('=')) {
                let value = Some(value.trim().to_owned());
                match key.trim() {
                    "aws_access_key_id" => id = value,
                    "aws_secret_access_key" => secret = value,
                    "aws_session_token" => token = value,
                    _ => {}
                }
            }
        }
        Some(AwsCredentials::new(id?, secret?, token))
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn profile_name() -> String {
    var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned())
}

/// Why no credentials could be had. Each message says what to set.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// No credentials in the environment or the shared credentials file.
    #[error("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or a [{profile}] section in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials; AWS_PROFILE picks the section)")]
    NoCredentials {
        /// The profile looked for.
        profile: String,
    },
    /// `AWS_SHARED_CREDENTIALS_FILE` names a file that cannot be read.
    #[error("AWS_SHARED_CREDENTIALS_FILE {}: {source}", path.display())]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_credentials_file_is_read_by_profile_and_debug_hides_the_secrets() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[ops]\naws_access_key_id=KEYID\naws_secret_access_key=s3kr1t\naws_session_token=t0k3n\n";
        let ops = AwsCredentials::from_profile(text, "ops").expect("ops");
        assert_eq!(
            (
                ops.access_key_id.as_str(),
                ops.secret_access_key.as_str(),
                ops.session_token.as_deref()
            ),
            ("KEYID", "s3kr1t", Some("t0k3n"))
        );
        assert!(AwsCredentials::from_profile(text, "missing").is_none());
        let shown = format!("{ops:?}");
        assert!(shown.contains("KEYID"), "{shown}");
        assert!(
            !shown.contains("s3kr1t") && !shown.contains("t0k3n"),
            "{shown}"
        );
    }
}
