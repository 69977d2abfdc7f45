//! Storage for the HTTP side: web users, API tokens, web login sessions; and the old web
//! settings table of queues from before settings moved into the config file, read once by
//! that move and dropped. Plain CRUD; hashing, permissions and validation belong to `serve`
//! and `config`, which hand this module finished values. Changes to users and the drop of the
//! settings table take an actor and write their audit entry in the same transaction.

use super::records::*;
use super::store::append_audit;
use super::{Entity, Queue, QueueError, check_len};
use crate::limits;

/// Key of the single record of the old web settings table.
const SETTINGS_KEY: u64 = 0;

fn check_user(user: &User) -> Result<(), QueueError> {
    check_len("user name", &user.name, limits::QUEUE_NAME_BYTES_MAX)?;
    check_len(
        "password hash",
        &user.password_hash,
        limits::QUEUE_NAME_BYTES_MAX,
    )
}

impl Queue {
    // ---- users ----

    /// Creates a user and audits `UserAdded` by `actor` in the same transaction.
    ///
    /// # Errors
    /// [`QueueError::AlreadyExists`]; [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB
    /// errors.
    pub fn add_user(&self, user: &User, actor: &str) -> Result<(), QueueError> {
        check_user(user)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            if d.users.raw().get(w, &user.name)?.is_some() {
                return Err(QueueError::AlreadyExists {
                    entity: Entity::User,
                    key: user.name.clone(),
                });
            }
            d.users.put(w, &user.name, &UserRecord::V1(user.clone()))?;
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::UserAdded,
                target: AuditTarget::User {
                    name: user.name.clone(),
                },
                message: format!("User {} added", user.name),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(())
        })
    }

    /// Replaces an existing user (password, permissions) and audits `UserChanged`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB errors.
    pub fn update_user(&self, user: &User, actor: &str) -> Result<(), QueueError> {
        check_user(user)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            if d.users.raw().get(w, &user.name)?.is_none() {
                return Err(QueueError::NotFound {
                    entity: Entity::User,
                    key: user.name.clone(),
                });
            }
            d.users.put(w, &user.name, &UserRecord::V1(user.clone()))?;
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::UserChanged,
                target: AuditTarget::User {
                    name: user.name.clone(),
                },
                message: format!("User {} changed", user.name),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(())
        })
    }

    /// Removes a user with its API tokens and web sessions, and audits `UserRemoved`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::Full`]; LMDB errors.
    pub fn remove_user(&self, name: &str, actor: &str) -> Result<(), QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            if !d.users.raw().delete(w, name)? {
                return Err(QueueError::NotFound {
                    entity: Entity::User,
                    key: name.to_owned(),
                });
            }
            // Few tokens and sessions exist: a scan is fine and keeps no extra index.
            let mut tokens = Vec::new();
            for entry in d.tokens.raw().iter(w)? {
                let (key, bytes) = entry?;
                if let Ok(TokenRecord::V1(t)) = super::codec::decode(d.tokens.name, &key, bytes)
                    && t.user == name
                {
                    tokens.push(key.to_owned());
                }
            }
            for key in tokens {
                d.tokens.raw().delete(w, &key)?;
            }
            let mut sessions = Vec::new();
            for entry in d.web_sessions.raw().iter(w)? {
                let (key, bytes) = entry?;
                if let Ok(WebSessionRecord::V1(s)) =
                    super::codec::decode(d.web_sessions.name, &key, bytes)
                    && s.user == name
                {
                    sessions.push(key.to_owned());
                }
            }
            for key in sessions {
                d.web_sessions.raw().delete(w, &key)?;
            }
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::UserRemoved,
                target: AuditTarget::User {
                    name: name.to_owned(),
                },
                message: format!("User {name} removed"),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(())
        })
    }

    /// A user by name.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`] / [`QueueError::UnknownVersion`].
    pub fn user(&self, name: &str) -> Result<Option<User>, QueueError> {
        self.read(|r, d| Ok(d.users.get(r, name)?.map(|UserRecord::V1(u)| u)))
    }

    /// All users, by name (unreadable ones logged and skipped).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn users(&self) -> Result<Vec<User>, QueueError> {
        self.read(|r, d| {
            let mut out = Vec::new();
            for entry in d.users.raw().iter(r)? {
                let (key, bytes) = entry?;
                match super::codec::decode::<UserRecord>(d.users.name, &key, bytes) {
                    Ok(UserRecord::V1(u)) => out.push(u),
                    Err(e) => log::error!("queue skipping unreadable user key={key} error={e}"),
                }
            }
            Ok(out)
        })
    }

    // ---- API tokens ----

    /// Stores an API token (its hash) and audits `TokenCreated` by `actor`.
    ///
    /// # Errors
    /// [`QueueError::AlreadyExists`]; [`QueueError::NotFound`] if the user does not exist;
    /// [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB errors.
    pub fn add_token(&self, token: &ApiToken, actor: &str) -> Result<(), QueueError> {
        check_len(
            "token hash",
            &token.token_hash,
            limits::QUEUE_NAME_BYTES_MAX,
        )?;
        check_len("token label", &token.label, limits::QUEUE_NAME_BYTES_MAX)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            if d.users.raw().get(w, &token.user)?.is_none() {
                return Err(QueueError::NotFound {
                    entity: Entity::User,
                    key: token.user.clone(),
                });
            }
            if d.tokens.raw().get(w, &token.token_hash)?.is_some() {
                return Err(QueueError::AlreadyExists {
                    entity: Entity::Token,
                    key: token.label.clone(),
                });
            }
            d.tokens
                .put(w, &token.token_hash, &TokenRecord::V1(token.clone()))?;
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::TokenCreated,
                target: AuditTarget::User {
                    name: token.user.clone(),
                },
                message: format!("API token {} created for {}", token.label, token.user),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(())
        })
    }

    /// Looks a token up by hash.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`].
    pub fn token(&self, token_hash: &str) -> Result<Option<ApiToken>, QueueError> {
        self.read(|r, d| Ok(d.tokens.get(r, token_hash)?.map(|TokenRecord::V1(t)| t)))
    }

    /// Tokens of one user (all users when `None`).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>, QueueError> {
        self.read(|r, d| {
            let mut out = Vec::new();
            for entry in d.tokens.raw().iter(r)? {
                let (key, bytes) = entry?;
                match super::codec::decode::<TokenRecord>(d.tokens.name, &key, bytes) {
                    Ok(TokenRecord::V1(t)) if user.is_none_or(|u| u == t.user) => out.push(t),
                    Ok(_) => {}
                    Err(e) => log::error!("queue skipping unreadable token error={e}"),
                }
            }
            Ok(out)
        })
    }

    /// Revokes a token and audits `TokenRevoked`. Returns whether it existed.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors.
    pub fn remove_token(&self, token_hash: &str, actor: &str) -> Result<bool, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let Some(TokenRecord::V1(token)) = d.tokens.get(w, token_hash)? else {
                return Ok(false);
            };
            d.tokens.raw().delete(w, token_hash)?;
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::TokenRevoked,
                target: AuditTarget::User {
                    name: token.user.clone(),
                },
                message: format!("API token {} of {} revoked", token.label, token.user),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(true)
        })
    }

    // ---- web sessions ----

    /// Stores a web login session (not audited here: `serve` audits the `Login` itself).
    ///
    /// # Errors
    /// [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB errors.
    pub fn put_web_session(&self, session: &WebSession) -> Result<(), QueueError> {
        check_len(
            "web session id hash",
            &session.id_hash,
            limits::QUEUE_NAME_BYTES_MAX,
        )?;
        check_len(
            "web session user",
            &session.user,
            limits::QUEUE_NAME_BYTES_MAX,
        )?;
        self.write(|w, d| {
            d.web_sessions
                .put(w, &session.id_hash, &WebSessionRecord::V1(session.clone()))
        })
    }

    /// A web session by id hash if it exists and has not expired at `now_ms`.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`].
    pub fn web_session(
        &self,
        id_hash: &str,
        now_ms: u64,
    ) -> Result<Option<WebSession>, QueueError> {
        self.read(|r, d| {
            Ok(d.web_sessions
                .get(r, id_hash)?
                .map(|WebSessionRecord::V1(s)| s)
                .filter(|s| s.expires_ms > now_ms))
        })
    }

    /// Deletes a web session (logout). Returns whether it existed.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors.
    pub fn remove_web_session(&self, id_hash: &str) -> Result<bool, QueueError> {
        self.write(|w, d| Ok(d.web_sessions.raw().delete(w, id_hash)?))
    }

    /// Deletes every web session expired at `now_ms` (and unreadable ones). Returns how many.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors.
    pub fn purge_web_sessions(&self, now_ms: u64) -> Result<usize, QueueError> {
        self.write(|w, d| {
            let mut dead = Vec::new();
            for entry in d.web_sessions.raw().iter(w)? {
                let (key, bytes) = entry?;
                match super::codec::decode::<WebSessionRecord>(d.web_sessions.name, &key, bytes) {
                    Ok(WebSessionRecord::V1(s)) if s.expires_ms > now_ms => {}
                    _ => dead.push(key.to_owned()),
                }
            }
            for key in &dead {
                d.web_sessions.raw().delete(w, key)?;
            }
            Ok(dead.len())
        })
    }

    // ---- the old web settings table ----

    /// The settings the web page saved in the queue before settings moved into the config
    /// file; `None` when this queue has no such table (new, or already moved).
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`] / [`QueueError::UnknownVersion`].
    pub fn legacy_settings(&self) -> Result<Option<SettingsOverride>, QueueError> {
        let Some(db) = *self
            .legacy_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        else {
            return Ok(None);
        };
        self.read(|r, _| Ok(db.get(r, &SETTINGS_KEY)?.map(|SettingsRecord::V1(s)| s)))
    }

    /// Drops the old web settings table and audits `message` by `actor` (`SettingsChanged`)
    /// in the same transaction: the move into the config file happens once.
    ///
    /// # Errors
    /// [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB errors.
    pub fn drop_legacy_settings(&self, actor: &str, message: &str) -> Result<(), QueueError> {
        check_len("actor", actor, limits::QUEUE_NAME_BYTES_MAX)?;
        let mut slot = self
            .legacy_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(db) = *slot else {
            return Ok(());
        };
        let now_ms = self.now_ms();
        self.write(|w, d| {
            // SAFETY: the handle is taken out of `slot` (under its lock) once this commits,
            // and nothing else holds a copy: no use of it follows the drop.
            unsafe { db.db.remove(w)? };
            let entry = NewAudit {
                actor: actor.to_owned(),
                action: AuditAction::SettingsChanged,
                target: AuditTarget::None,
                message: message.to_owned(),
            };
            append_audit(w, d, now_ms, &entry)?;
            Ok(())
        })?;
        *slot = None;
        Ok(())
    }

    /// Creates the old web settings table holding `toml`, as a queue from before the move
    /// had it (tests of the move).
    ///
    /// # Errors
    /// LMDB errors.
    #[doc(hidden)]
    pub fn create_legacy_settings_for_test(
        &self,
        toml: &str,
        actor: &str,
    ) -> Result<(), QueueError> {
        let mut slot = self
            .legacy_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let record = SettingsRecord::V1(SettingsOverride {
            version: 1,
            toml: toml.to_owned(),
            updated_ms: self.now_ms(),
            updated_by: actor.to_owned(),
        });
        let wtxn = self.env.write_txn()?;
        let db = self
            .env
            .create_databases_and_commit(wtxn, |o, w| -> Result<_, heed::Error> {
                let db: heed::Database<super::BeU64, super::codec::Postcard<SettingsRecord>> =
                    o.create_database(w, Some(super::db_name::SETTINGS))?;
                db.put(w, &SETTINGS_KEY, &record)?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
            })?
            .unwrap_commit();
        *slot = Some(super::codec::RecordDb {
            db,
            name: super::db_name::SETTINGS,
        });
        Ok(())
    }
}
