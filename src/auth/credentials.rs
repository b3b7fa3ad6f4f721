//! Where secrets come from, both ways: what a client must prove (a `[[users]]` entry, or
//! `auth_query` on the servers), and what pgsplit gives a server for that client's role (the
//! configured password, a stored hash, or the SCRAM ClientKey a client proved at its login).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lookup::AuthQuery;
use super::{Proven, Secret, ServerAuth, Verifier};
use crate::cluster::Cluster;
use crate::config::Live;
use crate::ops::metrics::Metrics;

pub struct Credentials {
    config: Live,
    pub lookup: AuthQuery,
    /// What the last login of each user proved (SCRAM verifier and ClientKey, or md5 hash).
    learned: Mutex<HashMap<String, ServerAuth>>,
}

impl Credentials {
    pub fn new(config: Live, cluster: Arc<Cluster>, metrics: Arc<Metrics>) -> Arc<Credentials> {
        let lookup = AuthQuery::new(config.clone(), cluster, metrics);
        Arc::new(Credentials { config, lookup, learned: Mutex::new(HashMap::new()) })
    }

    /// The secret a client logging in as `user` must prove; None: no such user. An error when
    /// auth_query cannot tell now (no server answers and nothing is cached).
    pub async fn client_secret(&self, user: &str) -> Result<Option<Secret>, String> {
        let config = self.config.load_full();
        if let Some(u) = config.user(user) {
            return Ok(Some(Secret::parse(&u.password)));
        }
        if !config.auth_query.enabled {
            return Ok(None);
        }
        Ok(self.lookup.secret(user).await?.map(|s| Secret::parse(&s)))
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
