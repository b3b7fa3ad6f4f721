//! What pgsplit gives a server for a client's role: the configured password, a stored hash, or
//! the SCRAM ClientKey a client proved at its login. (What a client must prove comes from its
//! `[[users]]` entry or `cluster::auth_query`, which runs on the servers.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Proven, Secret, ServerAuth, Verifier};
use crate::config::Live;

pub struct Credentials {
    config: Live,
    /// What the last login of each user proved (SCRAM verifier and ClientKey, or md5 hash).
    learned: Mutex<HashMap<String, ServerAuth>>,
}

impl Credentials {
    pub fn new(config: Live) -> Arc<Credentials> {
        Arc::new(Credentials { config, learned: Mutex::new(HashMap::new()) })
    }

    /// Keeps what a client of `user` proved at its login against `secret`: what pgsplit's own
    /// logins to the servers for that user will give (the SCRAM ClientKey with its verifier,
    /// or the md5 hash). Server logins use this, not the auth_query cache, so an answer
    /// evicted or cleared by a reload, or being re-fetched, never leaves a logged-in user's
    /// new server connections without a secret.
    pub fn proven(&self, user: &str, secret: Option<&Secret>, proven: Proven) {
        let listed = self.config.load().user(user).is_some();
        let auth = match (proven.scram, secret) {
            (Some(auth), _) => auth,
            // A listed user's server login comes from the config (only the ClientKey is learned).
            _ if listed => return,
            (None, Some(Secret::Md5(hash))) => ServerAuth::Md5(hash.clone()),
            (None, Some(Secret::Plain(pw))) if !pw.is_empty() => ServerAuth::Password(pw.clone()),
            _ => return,
        };
        self.learned.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), auth);
    }

    /// The role pgsplit logs into the servers as for client user `user`, and how it proves it.
    pub fn server_login(&self, user: &str) -> (String, ServerAuth) {
        let config = self.config.load();
        match config.user(user) {
            Some(u) => {
                let role = u.server_user.clone().unwrap_or_else(|| u.name.clone());
                let auth = match (&u.server_password, Secret::parse(&u.password)) {
                    (Some(pw), _) => ServerAuth::Password(pw.clone()),
                    (None, Secret::Plain(pw)) => ServerAuth::Password(pw),
                    (None, Secret::Md5(hash)) => ServerAuth::Md5(hash),
                    (None, Secret::Scram(v)) => self.learned(user, &v),
                };
                (role, auth)
            }
            None => {
                // An auth_query user (or any, with trust) logs in as itself, with what its
                // clients' last login proved.
                let auth = self.learned.lock().unwrap_or_else(|p| p.into_inner()).get(user).cloned();
                (user.to_string(), auth.unwrap_or_default())
            }
        }
    }

    /// The pass-through login a client of `user` made possible, if it was made with `verifier`
    /// (a verifier since replaced, by a reload or a password change, does not count).
    fn learned(&self, user: &str, verifier: &Verifier) -> ServerAuth {
        match self.learned.lock().unwrap_or_else(|p| p.into_inner()).get(user) {
            Some(a @ ServerAuth::Scram { verifier: v, .. }) if v == verifier => a.clone(),
            _ => ServerAuth::None,
        }
    }
}
