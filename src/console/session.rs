//! Console logins, with auth on: an admin token entered once becomes a
//! session (an HttpOnly, SameSite=Strict cookie that expires, Secure over
//! TLS) with a CSRF
//! token every action must carry. In memory: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

use crate::intake::auth::Client;

pub const COOKIE: &str = "mailspool_session";

struct Session {
    client: Arc<Client>,
    csrf: String,
    expires: Instant,
}

/// The sessions of one server.
pub struct Sessions {
    ttl: Duration,
    /// Served over TLS: the cookie is `Secure`.
    secure: bool,
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id the request's cookie carries.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Sessions {
        Sessions {
            ttl,
            secure,
            map: Mutex::default(),
        }
    }

    /// A new session for `client`: (its id, its CSRF token, the cookie).
    pub fn create(&self, client: Arc<Client>) -> (String, String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let now = Instant::now();
        let mut map = self.map.lock().expect("sessions");
        map.retain(|_, s| s.expires > now);
        map.insert(
            id.clone(),
            Session {
                client,
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        );
        (id, csrf, cookie)
    }

    /// The live session of the request: (client, CSRF token).
    pub fn of(&self, headers: &HeaderMap) -> Option<(Arc<Client>, String)> {
        let id = cookie(headers)?;
        let mut map = self.map.lock().expect("sessions");
        match map.get(&id) {
            Some(s) if s.expires > Instant::now() => Some((s.client.clone(), s.csrf.clone())),
            Some(_) => {
                map.remove(&id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.map.lock().expect("sessions").remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_its_cookie_until_it_expires() {
        let s = Sessions::new(Duration::from_millis(50), false);
        let auth = crate::intake::auth::Authenticator::new(false, &[]);
        let request = tonic::Request::new(());
        let ops = || {
            auth.check(&request, crate::intake::auth::Role::Admin)
                .unwrap()
        };
        let (id, csrf, cookie) = s.create(ops());
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        let secure = Sessions::new(Duration::from_secs(60), true);
        assert!(secure.create(ops()).2.ends_with("; Secure"));
        assert_eq!(id.len(), 64);
        let h = with_cookie(&format!("theme=dark; {COOKIE}={id}"));
        assert_eq!(
            s.of(&h).map(|(c, t)| (c.name.clone(), t)),
            Some((String::new(), csrf))
        );
        assert!(s.of(&with_cookie(&format!("{COOKIE}=forged"))).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.of(&h).is_none(), "expired");
        let (id, _, _) = s.create(ops());
        let h = with_cookie(&format!("{COOKIE}={id}"));
        s.end(&h);
        assert!(s.of(&h).is_none(), "logged out");
    }
}
