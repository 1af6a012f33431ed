//! MQTT URLs: `mqtt://` and `mqtts://`, MQTT over WebSockets as `ws://` and `wss://` (with a
//! path), credentials in the URL, IPv6 hosts; and the URL with its password hidden, for
//! messages and logs.

/// An MQTT URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("MQTT URL {url:?} {problem}; expected mqtt://host[:port], mqtts://host[:port], ws://host[:port][/path] or wss://host[:port][/path]")]
pub struct MqttUrlError {
    /// The URL, password hidden.
    pub url: String,
    /// What is wrong with it.
    pub problem: UrlProblem,
}

/// What is wrong with an MQTT URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not `mqtt://`, `mqtts://`, `ws://` or `wss://`.
    #[error("has an unknown scheme")]
    UnknownScheme,
    /// An IPv6 address without its closing bracket.
    #[error("has an unclosed [")]
    UnclosedBracket,
    /// A port that is not a number from 0 to 65535.
    #[error("has a bad port")]
    BadPort,
    /// Nothing before the port, or a path where the host should be.
    #[error("has no host")]
    NoHost,
}

/// The path of a WebSocket URL that names none: AWS IoT Core's, mosquitto's and most brokers'.
const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The parts of an MQTT URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// TLS (`mqtts`, `wss`).
    pub tls: bool,
    /// MQTT over WebSockets (`ws`, `wss`).
    pub websocket: bool,
    /// The WebSocket's path (`/mqtt` unless the URL has one); empty for plain MQTT.
    pub path: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// From `user@`.
    pub username: Option<String>,
    /// From `user:password@`.
    pub password: Option<String>,
}

impl ParsedUrl {
    /// Parses `mqtt://` and `mqtts://` URLs.
    ///
    /// # Errors
    /// Any other scheme, a missing host, or a bad port, with the URL (password hidden).
    pub fn parse(url: &str) -> Result<Self, MqttUrlError> {
        let bad = |problem| MqttUrlError {
            url: redact(url),
            problem,
        };
        let (tls, websocket, rest) = [
            ("mqtt://", false, false),
            ("mqtts://", true, false),
            ("ws://", false, true),
            ("wss://", true, true),
        ]
        .into_iter()
        .find_map(|(scheme, tls, ws)| url.strip_prefix(scheme).map(|rest| (tls, ws, rest)))
        .ok_or_else(|| bad(UrlProblem::UnknownScheme))?;
        // A WebSocket URL's path starts at the first `/` after the user info.
        let host_start = rest.rfind('@').map_or(0, |at| at + 1);
        let (rest, path) = match rest[host_start..].find('/').map(|i| host_start + i) {
            Some(slash) if websocket && &rest[slash..] != "/" => {
                (&rest[..slash], rest[slash..].to_owned())
            }
            Some(slash) if websocket => (&rest[..slash], DEFAULT_WEBSOCKET_PATH.to_owned()),
            None if websocket => (rest, DEFAULT_WEBSOCKET_PATH.to_owned()),
            _ => (rest, String::new()),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(info.to_owned()), None),
            },
            None => (None, None),
        };
        let default_port = match (websocket, tls) {
            (false, false) => 1883,
            (false, true) => 8883,
            (true, false) => 80,
            (true, true) => 443,
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad(UrlProblem::UnclosedBracket))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad(UrlProblem::BadPort))?,
                None => default_port,
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| bad(UrlProblem::BadPort))?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad(UrlProblem::NoHost));
        }
        Ok(ParsedUrl {
            tls,
            websocket,
            path,
            host,
            port,
            username,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_credentials_and_ipv6() {
        let u = ParsedUrl::parse("mqtt://localhost").expect("valid");
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "localhost", 1883));
        let u = ParsedUrl::parse("mqtts://a:b@iot.example:443").expect("valid");
        assert_eq!((u.tls, u.port), (true, 443));
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("a"), Some("b"))
        );
        let u = ParsedUrl::parse("mqtt://[::1]:1884").expect("valid");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        for (bad, problem) in [
            ("http://x", UrlProblem::UnknownScheme),
            ("mqtt://", UrlProblem::NoHost),
            ("mqtt://host:port", UrlProblem::BadPort),
            ("mqtt://h:99999", UrlProblem::BadPort),
            ("mqtt://[::1:1884", UrlProblem::UnclosedBracket),
        ] {
            let error = ParsedUrl::parse(bad).expect_err(bad);
            assert_eq!(error.problem, problem, "{bad}");
        }
        let u = ParsedUrl::parse("wss://a1-ats.iot.eu-west-1.amazonaws.com").expect("valid");
        assert_eq!(
            (u.tls, u.websocket, u.port, u.path.as_str()),
            (true, true, 443, "/mqtt")
        );
        let u = ParsedUrl::parse("ws://u:p@[::1]:9001/ws/mqtt").expect("valid");
        assert_eq!(
            (u.tls, u.websocket, u.host.as_str(), u.port),
            (false, true, "::1", 9001)
        );
        assert_eq!(
            (u.path.as_str(), u.username.as_deref()),
            ("/ws/mqtt", Some("u"))
        );
        assert_eq!(ParsedUrl::parse("mqtt://h").expect("valid").path, "");
        let error = ParsedUrl::parse("tcp://user:secret@h")
            .expect_err("bad scheme")
            .to_string();
        assert!(
            error.contains("user:***@h") && !error.contains("secret"),
            "{error}"
        );
    }
}
