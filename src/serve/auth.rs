//! Local accounts and permissions: argon2 password hashes, login-session cookies, API tokens
//! (`Authorization: Bearer`), CSRF tokens, and the `user add` command-line logic.
//!
//! Permissions follow Kasm's names: `SESSIONS_VIEW` (history list), `SESSION_RECORDINGS_VIEW`
//! (play and download), `ADMIN` (settings, users, audit log; implies the other two).
//! Cookie values and tokens are random 256-bit strings; only their SHA-256 is stored, so a
//! copy of the database does not log anybody in. The CSRF token of a login session is derived
//! from its cookie value, so it needs no storage and cannot be guessed without the cookie.

use std::io::BufRead;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use super::ServeError;
use super::backend::{AccountStore, UserRow};
use crate::limits::{HTTP_PASSWORD_CHARS_MAX, HTTP_PASSWORD_CHARS_MIN, HTTP_USER_NAME_CHARS_MAX};

/// A set of permissions (bits as stored in the user record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(pub u64);

impl Permissions {
    /// The session history list.
    pub const SESSIONS_VIEW: Permissions = Permissions(1);
    /// Play and download recordings.
    pub const SESSION_RECORDINGS_VIEW: Permissions = Permissions(2);
    /// Settings, users, audit log; implies every other permission.
    pub const ADMIN: Permissions = Permissions(4);
    /// Typed text and clipboard contents (in search hits and the player's event pane);
    /// without it a viewer sees that such an event happened, not its text.
    pub const SESSION_KEYSTROKES_VIEW: Permissions = Permissions(8);
    /// Nothing.
    pub const NONE: Permissions = Permissions(0);

    const NAMES: [(&'static str, Permissions); 4] = [
        ("SESSIONS_VIEW", Self::SESSIONS_VIEW),
        ("SESSION_RECORDINGS_VIEW", Self::SESSION_RECORDINGS_VIEW),
        ("SESSION_KEYSTROKES_VIEW", Self::SESSION_KEYSTROKES_VIEW),
        ("ADMIN", Self::ADMIN),
    ];

    /// Whether this set grants `p` (ADMIN grants everything).
    pub fn allows(self, p: Permissions) -> bool {
        self.0 & Self::ADMIN.0 != 0 || (p.0 != 0 && self.0 & p.0 == p.0)
    }

    /// The union.
    pub fn with(self, p: Permissions) -> Permissions {
        Permissions(self.0 | p.0)
    }

    /// Parses `SESSIONS_VIEW,ADMIN` (case-insensitive, commas or spaces).
    ///
    /// # Errors
    /// An unknown name, quoted.
    pub fn parse(s: &str) -> Result<Permissions, String> {
        let mut p = Permissions::NONE;
        for word in s.split([',', ' ']).map(str::trim).filter(|w| !w.is_empty()) {
            let found = Self::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(word))
                .ok_or_else(|| {
                    format!(
                        "unknown permission `{word}` (known: SESSIONS_VIEW, \
                         SESSION_RECORDINGS_VIEW, SESSION_KEYSTROKES_VIEW, ADMIN)"
                    )
                })?;
            p = p.with(found.1);
        }
        Ok(p)
    }

    /// The names, comma-separated.
    pub fn names(self) -> String {
        Self::NAMES
            .iter()
            .filter(|(_, p)| self.0 & p.0 != 0)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Hashes a password with argon2id (default parameters, random salt) into a PHC string.
///
/// # Errors
/// The OS random source failed.
pub fn hash_password(password: &str) -> Result<String, ServeError> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|e| ServeError::Random(e.to_string()))?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| ServeError::Random(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServeError::Random(e.to_string()))
}

/// Checks a password against a PHC string; a malformed hash is a mismatch.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// 32 random bytes as 64 hex characters (cookie values, API tokens, generated passwords).
///
/// # Errors
/// The OS random source failed.
pub fn random_token() -> Result<String, ServeError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ServeError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

/// SHA-256 hex of a secret, the form stored for cookies and tokens.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The CSRF token belonging to a login-session cookie value.
pub fn csrf_for(cookie_value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"session-recorder csrf v1\0");
    h.update(cookie_value.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Checks a user name: 1..=64 characters of letters, digits and `@._+-`.
///
/// # Errors
/// What is wrong.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "@._+-".contains(c);
    if name.is_empty() || name.chars().count() > HTTP_USER_NAME_CHARS_MAX {
        return Err(format!(
            "user name must be 1 to {HTTP_USER_NAME_CHARS_MAX} characters"
        ));
    }
    if !name.chars().all(ok_char) {
        return Err("user name may only contain letters, digits and @ . _ + -".into());
    }
    Ok(())
}

/// Checks a new password's length.
///
/// # Errors
/// What is wrong.
pub fn check_password(pw: &str) -> Result<(), String> {
    let n = pw.chars().count();
    if !(HTTP_PASSWORD_CHARS_MIN..=HTTP_PASSWORD_CHARS_MAX).contains(&n) {
        return Err(format!(
            "password must be {HTTP_PASSWORD_CHARS_MIN} to {HTTP_PASSWORD_CHARS_MAX} characters"
        ));
    }
    Ok(())
}

/// `session-recorder user add NAME --permissions ... [--password-stdin]`.
#[derive(Debug, Clone, clap::Args)]
pub struct UserAddArgs {
    /// Login name (e.g. admin@example.com).
    pub name: String,
    /// Comma-separated: SESSIONS_VIEW, SESSION_RECORDINGS_VIEW, ADMIN.
    #[arg(long, default_value = "SESSIONS_VIEW")]
    pub permissions: String,
    /// Read the password from the first line of standard input; without it a random password
    /// is generated and printed once.
    #[arg(long)]
    pub password_stdin: bool,
}

impl UserAddArgs {
    /// Checks the name and the permission names before anything is opened or read.
    ///
    /// # Errors
    /// What is wrong, naming the valid permission names for an unknown one.
    pub fn check(&self) -> Result<Permissions, String> {
        check_user_name(&self.name)?;
        Permissions::parse(&self.permissions)
    }
}

/// Runs `user add`: validates, hashes and stores the user (replacing one of the same name).
/// Returns the generated password when none was read from `stdin`.
///
/// # Errors
/// Bad name, permissions or password; storage failure.
pub fn user_add_cli(
    args: &UserAddArgs,
    backend: &dyn AccountStore,
    stdin: &mut dyn BufRead,
    now_ms: u64,
) -> Result<Option<String>, ServeError> {
    let permissions = args.check().map_err(ServeError::BadInput)?;
    let (password, generated) = if args.password_stdin {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| ServeError::BadInput(format!("reading the password: {e}")))?;
        (line.trim_end_matches(['\r', '\n']).to_string(), false)
    } else {
        (random_token()?[..24].to_string(), true)
    };
    check_password(&password).map_err(ServeError::BadInput)?;
    let user = UserRow {
        name: args.name.clone(),
        password_hash: hash_password(&password)?,
        permissions: permissions.0,
        created_ms: now_ms,
    };
    backend.put_user(&user, "cli")?;
    log::info!(
        "event=user_added user={} permissions={}",
        user.name,
        permissions.names()
    );
    Ok(generated.then_some(password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::backend::MemBackend;

    #[test]
    fn admin_implies_everything_and_others_do_not() {
        let admin = Permissions::ADMIN;
        assert!(admin.allows(Permissions::SESSIONS_VIEW));
        assert!(admin.allows(Permissions::SESSION_RECORDINGS_VIEW));
        let view = Permissions::SESSIONS_VIEW;
        assert!(view.allows(Permissions::SESSIONS_VIEW));
        assert!(!view.allows(Permissions::SESSION_RECORDINGS_VIEW));
        assert!(!view.allows(Permissions::ADMIN));
        assert!(!Permissions::NONE.allows(Permissions::NONE));
    }

    #[test]
    fn permissions_parse_and_print() {
        let p = Permissions::parse("sessions_view, SESSION_RECORDINGS_VIEW").unwrap();
        assert_eq!(p.names(), "SESSIONS_VIEW,SESSION_RECORDINGS_VIEW");
        assert!(Permissions::parse("ROOT").unwrap_err().contains("ROOT"));
    }

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn user_add_reads_stdin_and_validates() {
        let b = MemBackend::new();
        let args = UserAddArgs {
            name: "admin@example.com".into(),
            permissions: "ADMIN".into(),
            password_stdin: true,
        };
        let out = user_add_cli(&args, &b, &mut &b"s3cret-pass\n"[..], 5).unwrap();
        assert_eq!(out, None);
        let u = b.user("admin@example.com").unwrap().unwrap();
        assert!(verify_password("s3cret-pass", &u.password_hash));
        assert_eq!(u.permissions, Permissions::ADMIN.0);
        let short = user_add_cli(&args, &b, &mut &b"short\n"[..], 5);
        assert!(matches!(short, Err(ServeError::BadInput(_))));
        let bad = UserAddArgs {
            name: "../etc".into(),
            ..args.clone()
        };
        assert!(user_add_cli(&bad, &b, &mut &b"long enough\n"[..], 5).is_err());
        let generated = UserAddArgs {
            password_stdin: false,
            ..args
        };
        let pw = user_add_cli(&generated, &b, &mut &b""[..], 5)
            .unwrap()
            .unwrap();
        let u = b.user("admin@example.com").unwrap().unwrap();
        assert!(verify_password(&pw, &u.password_hash));
    }
}
