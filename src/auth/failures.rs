//! Slowing password guessing: failures counted by source address.

use std::time::Duration;

/// Authentication failures by source address: after `FREE` failures within `WINDOW`, each
/// further attempt from that address waits a second more (up to `MAX_DELAY`) before it is
/// answered, so guessing passwords is slow while others are not affected.
#[derive(Default)]
pub struct AuthFailures {
    by_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

const FREE: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(10);

impl AuthFailures {
    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| t.elapsed() < WINDOW);
        }
        let e = m.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() > WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
    }

    pub fn delay(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = m.get(&ip)?;
        if since.elapsed() > WINDOW || *n < FREE {
            return None;
        }
        Some(Duration::from_secs(u64::from(n - FREE + 1)).min(MAX_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_an_address_down() {
        let f = AuthFailures::default();
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let other: std::net::IpAddr = [10, 0, 0, 2].into();
        for _ in 0..FREE - 1 {
            f.failed(ip);
        }
        assert_eq!(f.delay(ip), None);
        f.failed(ip);
        assert_eq!(f.delay(ip), Some(Duration::from_secs(1)));
        for _ in 0..20 {
            f.failed(ip);
        }
        assert_eq!(f.delay(ip), Some(MAX_DELAY));
        assert_eq!(f.delay(other), None);
    }
}
