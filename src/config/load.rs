//! Reading a configuration: the file, the secrets it points to, and the checks serde cannot make.

use std::path::Path;

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: String, err: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.display().to_string(), err })?;
        let mut c = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { err, .. } => ConfigError::Parse { path: path.display().to_string(), err },
            other => other,
        })?;
        c.resolve_secrets()?;
        Ok(c)
    }

    /// Reads passwords given by file or environment variable into the users' `password`.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        for u in &mut self.users {
            if let Some(file) = &u.password_file {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| ConfigError::Invalid(format!("users {:?}: password_file {file}: {e}", u.name)))?;
                u.password = text.lines().next().unwrap_or("").to_string();
            } else if let Some(var) = &u.password_env {
                u.password = std::env::var(var).map_err(|_| {
                    ConfigError::Invalid(format!("users {:?}: the environment variable {var} is not set", u.name))
                })?;
            }
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: "config".into(), err: parse_error(text, &e) })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr_ok = |key: &str, v: &str| -> Result<(), ConfigError> {
            if v.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(ConfigError::Invalid(format!("{key} = {v:?} is not HOST:PORT")));
            }
            Ok(())
        };
        addr_ok("listen", &self.listen)?;
        if !self.metrics_listen.is_empty() {
            addr_ok("metrics_listen", &self.metrics_listen)?;
        }
        if self.servers.primary.is_empty() {
            return Err(ConfigError::Invalid("servers.primary is not set (config file or --primary HOST:PORT)".into()));
        }
        addr_ok("servers.primary", &self.servers.primary)?;
        let mut seen = vec![self.servers.primary.as_str()];
        for r in &self.servers.replicas {
            addr_ok("servers.replicas", r.addr())?;
            if seen.contains(&r.addr()) {
                return Err(ConfigError::Invalid(format!("server {} is listed twice", r.addr())));
            }
            seen.push(r.addr());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(ConfigError::Invalid(format!("log_level = {:?} is not a tracing filter", self.log_level)));
        }
        if self.pool.size == 0 {
            return Err(ConfigError::Invalid("pool.size must be at least 1".into()));
        }
        if self.routing.cache_size == 0 {
            return Err(ConfigError::Invalid("routing.cache_size must be at least 1".into()));
        }
        if self.monitor.interval_ms == 0 {
            return Err(ConfigError::Invalid("monitor.interval_ms must be at least 1".into()));
        }
        if self.auth != AuthMethod::Trust && self.users.is_empty() && !self.auth_query.enabled {
            return Err(ConfigError::Invalid(
                "auth is md5 or scram-sha-256 but no [[users]] are configured (nor auth_query)".into(),
            ));
        }
        if self.failover.mode == FailoverMode::Auto && self.failover.state_dir.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "failover.state_dir is empty but failover.mode = \"auto\": a restart would forget a failover and send \
                 writes to a stale primary (set a directory, default /var/lib/pgsplit)"
                    .into(),
            ));
        }
        if self.auth != AuthMethod::Trust
            && let Some(u) = self.users.iter().find(|u| u.password.is_empty())
        {
            return Err(ConfigError::Invalid(format!(
                "users {:?}: an empty password (auth = md5 or scram-sha-256 never accepts one, as PostgreSQL does not)",
                u.name
            )));
        }
        if self.auth == AuthMethod::Trust && !self.trust_network && !is_loopback(&self.listen) {
            return Err(ConfigError::Invalid(format!(
                "auth = \"trust\" on listen = {:?}: anyone who can reach that address would log in as any user \
                 (use md5 or scram-sha-256 with [[users]], listen on 127.0.0.1, or set trust_network = true)",
                self.listen
            )));
        }
        if self.auth == AuthMethod::Trust && !self.admin.trust {
            for name in &self.admin.users {
                if self.user(name).is_none_or(|u| u.password.is_empty()) {
                    return Err(ConfigError::Invalid(format!(
                        "[admin] users {name:?} has no password: the console asks for one even with auth = \"trust\" \
                         (give it a [[users]] entry with a password, or set [admin] trust = true)"
                    )));
                }
            }
        }
        if self.auth == AuthMethod::Trust && self.auth_query.enabled {
            return Err(ConfigError::Invalid("auth_query needs auth = \"md5\" or \"scram-sha-256\"".into()));
        }
        self.auth_query.validate().map_err(ConfigError::Invalid)?;
        self.coordination.validate().map_err(ConfigError::Invalid)?;
        self.tls.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    pub fn replica_addrs(&self) -> Vec<String> {
        self.servers.replicas.iter().map(|r| r.addr().to_string()).collect()
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.admin.users.iter().any(|u| u == user)
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// A TOML error as the operator needs it: where, what, and the line, unless that line holds a
/// secret (a password, a token, a hook command): then neither the line nor the parser's message
/// (which may quote the value) is repeated, at start, on RELOAD or in the console.
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "not valid TOML".into();
    };
    let before = text.get(..span.start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let key = line_text.split('=').next().unwrap_or("").trim();
    if super::is_secret_key(line_text) {
        return format!(
            "line {line}, column {column}: the value of {key} is not valid here (secret settings are not shown: \
             check that line)"
        );
    }
    let message = e.message().trim();
    format!("line {line}, column {column}: {message}\n  | {line_text}")
}

/// Whether a listen address only accepts local connections.
fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../config/pgsplit.toml");
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.servers.replicas.len(), 2);
    }

    #[test]
    fn auth_methods_as_documented() {
        for (text, want) in
            [("trust", AuthMethod::Trust), ("md5", AuthMethod::Md5), ("scram-sha-256", AuthMethod::ScramSha256)]
        {
            assert_eq!(Config::parse(&format!("auth = \"{text}\"\n")).unwrap().auth, want);
            assert_eq!(text.parse::<AuthMethod>().unwrap(), want);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[pool]\nsise = 3\n").unwrap_err().to_string();
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[routing]\nmax_lag_bytes = \"lots\"\n").unwrap_err().to_string();
        assert!(err.contains("max_lag_bytes"), "{err}");
        let err = Config::parse("auth = \"password\"\n").unwrap_err().to_string();
        assert!(err.contains("auth"), "{err}");
    }

    #[test]
    fn replicas_with_settings() {
        let c = Config::parse(
            "[servers]\nprimary = \"p:1\"\nreplicas = [\"a:1\", { addr = \"b:1\", weight = 3, max_lag_ms = 50 }]\n\
             [routing]\nbalance = \"least_outstanding\"\non_all_lagging = \"error\"\nread_your_writes = \"global\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.replica_addrs(), vec!["a:1", "b:1"]);
        assert_eq!(c.servers.replicas[1].weight(), 3);
        assert_eq!(c.servers.replicas[1].limits(&c.routing), (c.routing.max_lag_bytes, 50));
        assert_eq!(c.routing.balance, Balance::LeastOutstanding);
        let err = Config::parse("[servers]\nprimary = \"p:1\"\nreplicas = [\"p:1\"]\n").unwrap().validate();
        assert!(err.unwrap_err().to_string().contains("twice"));
        let err = Config::parse("[servers]\nreplicas = [{ addr = \"b:1\", wieght = 3 }]\n").unwrap_err().to_string();
        assert!(err.contains("replicas"), "{err}");
    }

    #[test]
    fn missing_primary_is_explained() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("servers.primary"), "{err}");
    }

    #[test]
    fn empty_passwords_are_refused() {
        let text = "auth = \"md5\"\n[servers]\nprimary = \"p:1\"\n[[users]]\nname = \"app\"\npassword = \"\"\n";
        let err = Config::parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("empty password") && err.contains("app"), "{err}");
        let trust = "[servers]\nprimary = \"p:1\"\n[[users]]\nname = \"app\"\npassword = \"\"\n";
        assert!(Config::parse(trust).unwrap().validate().is_ok(), "trust needs no password");
    }

    #[test]
    fn trust_stays_local_and_the_console_asks_for_a_password() {
        let base = "[servers]\nprimary = \"p:1\"\n";
        let check =
            |extra: &str| Config::parse(&format!("{extra}\n{base}")).unwrap().validate().map_err(|e| e.to_string());
        for listen in ["127.0.0.1:6432", "localhost:6432", "[::1]:6432"] {
            assert!(check(&format!("listen = \"{listen}\"")).is_ok(), "{listen}");
        }
        for listen in ["0.0.0.0:6432", "10.0.0.5:6432", "[::]:6432", "db.example.com:6432"] {
            let err = check(&format!("listen = \"{listen}\"")).unwrap_err();
            assert!(err.contains("trust_network"), "{listen}: {err}");
        }
        assert!(check("listen = \"0.0.0.0:6432\"\ntrust_network = true").is_ok());
        assert!(check("listen = \"0.0.0.0:6432\"\nauth = \"md5\"\n[[users]]\nname = \"a\"\npassword = \"x\"").is_ok());
        // The console's users need a password even with trust, unless [admin] trust says not.
        let admin = |users: &str, trust: bool| {
            let text = format!("{base}[admin]\nusers = [\"ops\"]\ntrust = {trust}\n{users}");
            Config::parse(&text).unwrap().validate().map_err(|e| e.to_string())
        };
        assert!(admin("", false).unwrap_err().contains("[admin] trust"));
        assert!(admin("[[users]]\nname = \"ops\"\npassword = \"\"\n", false).is_err());
        assert!(admin("[[users]]\nname = \"ops\"\npassword = \"pw\"\n", false).is_ok());
        assert!(admin("", true).is_ok());
    }

    #[test]
    fn parse_errors_never_show_a_secret() {
        let cases = [
            "[monitor]\npassword = hunter2\n",
            "[monitor]\npassword = 4242\n",
            "[[users]]\nname = \"a\"\nserver_password = [\"hunter2\"]\n",
            "[[users]]\n{ name = \"a\", password = hunter2 }\n",
            "[failover]\nfence_command = ssh root@db hunter2\n",
            "[auth_query]\npassword = 'hunter2\n",
        ];
        for text in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("4242"), "{text:?} gave {err}");
            assert!(err.contains("line "), "{err}");
        }
        // Other lines are quoted, with the parser's message.
        let err = Config::parse("[pool]\nsize = \"twenty\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("size = \"twenty\"") && err.contains("invalid type"), "{err}");
    }
}
