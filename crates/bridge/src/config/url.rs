//! MQTT URLs: `mqtt://` and `mqtts://`, credentials in the URL, IPv6 hosts; and the URL
//! with its password hidden, for messages and logs.

/// An MQTT URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("MQTT URL {url:?} {problem}; expected mqtt://host[:port] or mqtts://host[:port]")]
pub struct MqttUrlError {
    /// The URL, password hidden.
    pub url: String,
    /// What is wrong with it.
    pub problem: UrlProblem,
}

/// What is wrong with an MQTT URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Neither `mqtt://` nor `mqtts://`.
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
    /// TLS (`mqtts`).
    pub tls: bool,
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
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(bad(UrlProblem::UnknownScheme));
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
        let default_port = if tls { 8883 } else { 1883 };
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
        let error = ParsedUrl::parse("tcp://user:secret@h")
            .expect_err("bad scheme")
            .to_string();
        assert!(
            error.contains("user:***@h") && !error.contains("secret"),
            "{error}"
        );
    }
}
