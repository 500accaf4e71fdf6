//! Endpoint addresses: `host:port`, `ip:port`, `[v6]:port`, optionally with a
//! scheme (`http://`, `https://`), and lists of them.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use crate::error::AddressError;

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IP address; used as is.
    Ip(IpAddr),
    /// A DNS name; resolved at start and every `resolve_interval` after.
    Name(String),
}

/// The scheme an address was written with: how it asks to be reached.
///
/// An address without a scheme follows the balancer's TLS setting (TLS when
/// any `tls_*` setting of the [`Builder`](crate::Builder) is made, or when
/// another address says `https://`); one with a scheme insists on it, and
/// [`Builder::build`](crate::Builder::build) refuses a list that contradicts
/// itself (see the crate guide, "TLS").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http://`: plaintext HTTP/2.
    Http,
    /// `https://`: HTTP/2 over TLS.
    Https,
}

impl Scheme {
    /// The scheme's name as written before `://`: `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured endpoint address, before resolution.
///
/// Parsed from `host:port`, `ip:port` or `[ipv6]:port`, optionally prefixed with
/// `http://` or `https://` (a trailing `/` is tolerated). The port is required
/// and non-zero. The scheme, if any, is kept ([`Target::scheme`]); the display
/// form is always `host:port`.
///
/// ```
/// use chat_lb_client::{Scheme, Target};
/// let t: Target = "replica-1.lan:8500".parse().unwrap();
/// assert_eq!((t.port(), t.scheme()), (8500, None));
/// let tls: Target = "https://replica-1.lan:8500".parse().unwrap();
/// assert_eq!(tls.scheme(), Some(Scheme::Https));
/// assert_eq!(tls.to_string(), "replica-1.lan:8500");
/// assert!("replica-1.lan".parse::<Target>().is_err());
/// assert!("ftp://replica-1.lan:21".parse::<Target>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: Host,
    port: u16,
    scheme: Option<Scheme>,
}

impl Target {
    /// A target for a host and port, without a scheme (it follows the
    /// balancer's TLS setting).
    pub fn new(host: Host, port: u16) -> Self {
        Self {
            host,
            port,
            scheme: None,
        }
    }

    /// The same target, written with `scheme`.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = Some(scheme);
        self
    }

    /// The scheme it was written with, if any (`None`: it follows the
    /// balancer's TLS setting).
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, when the host is a literal IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Whether the host is a DNS name that must be resolved.
    pub fn is_name(&self) -> bool {
        matches!(self.host, Host::Name(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::new(Host::Ip(addr.ip()), addr.port())
    }
}

impl FromStr for Target {
    type Err = AddressError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        let invalid = |reason| AddressError::Invalid {
            entry: entry.to_owned(),
            reason,
        };
        if entry.is_empty() {
            return Err(invalid("empty entry"));
        }
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
                (Some(Scheme::Http), rest)
            }
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => {
                (Some(Scheme::Https), rest)
            }
            Some(_) => {
                return Err(invalid(
                    "only `host:port`, `http://host:port` or `https://host:port` is supported",
                ));
            }
            None => (None, entry),
        };
        if rest.contains("://") {
            return Err(invalid("more than one scheme"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);

        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("missing `]` after an IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("missing `:port`"))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| invalid("not a valid IPv6 address between `[` and `]`"))?;
            (Host::Ip(ip), port)
        } else {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("missing `:port`"))?;
            if host.contains(':') {
                return Err(invalid("IPv6 addresses must be written as `[addr]:port`"));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => {
                    validate_hostname(host).map_err(invalid)?;
                    Host::Name(host.to_ascii_lowercase())
                }
            };
            (host, port)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(invalid("the port must not be 0"));
        }
        Ok(Self { host, port, scheme })
    }
}

fn validate_hostname(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("missing host before `:port`");
    }
    if host.len() > 253 {
        return Err("host name longer than 253 characters");
    }
    for label in host.strip_suffix('.').unwrap_or(host).split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("host name labels must be 1 to 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host name labels must not start or end with `-`");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("host names may only hold letters, digits, `-`, `_` and `.`");
        }
    }
    Ok(())
}

/// Parses a comma-separated address list such as `"a:8500, b:8500,10.0.0.3:8500"`.
///
/// Whitespace around entries is ignored; an empty entry or an empty list is an
/// error, and so is any malformed entry (the error names it).
///
/// ```
/// use chat_lb_client::{parse_address_list, AddressError};
/// assert_eq!(parse_address_list("a:1, 127.0.0.1:2").unwrap().len(), 2);
/// let err = parse_address_list("a:1,b").unwrap_err();
/// assert!(matches!(err, AddressError::Invalid { ref entry, .. } if entry == "b"));
/// ```
pub fn parse_address_list(list: &str) -> Result<Vec<Target>, AddressError> {
    if list.trim().is_empty() {
        return Err(AddressError::Empty);
    }
    list.split(',').map(str::parse).collect()
}

/// Things that name one endpoint: `&str`/`String` (parsed as a [`Target`]),
/// [`SocketAddr`] and [`Target`].
pub trait IntoTarget {
    /// Converts into a target, failing on a malformed address.
    fn into_target(self) -> Result<Target, AddressError>;
}

impl IntoTarget for Target {
    fn into_target(self) -> Result<Target, AddressError> {
        Ok(self)
    }
}

impl IntoTarget for SocketAddr {
    fn into_target(self) -> Result<Target, AddressError> {
        Ok(self.into())
    }
}

impl IntoTarget for &str {
    fn into_target(self) -> Result<Target, AddressError> {
        self.parse()
    }
}

impl IntoTarget for String {
    fn into_target(self) -> Result<Target, AddressError> {
        self.parse()
    }
}

impl IntoTarget for &String {
    fn into_target(self) -> Result<Target, AddressError> {
        self.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        let list = parse_address_list(
            " a.example:8500 ,127.0.0.1:1, [::1]:9 ,http://B:7/, https://c:8, HTTPS://[::1]:10",
        )
        .unwrap();
        assert_eq!(list[0], Target::new(Host::Name("a.example".into()), 8500));
        assert_eq!(list[0].scheme(), None);
        assert_eq!(list[1].socket_addr(), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(list[2].socket_addr(), Some("[::1]:9".parse().unwrap()));
        assert_eq!(
            list[3],
            Target::new(Host::Name("b".into()), 7).with_scheme(Scheme::Http)
        );
        assert_eq!(list[2].to_string(), "[::1]:9");
        assert_eq!(list[4].scheme(), Some(Scheme::Https));
        assert_eq!(list[4].to_string(), "c:8");
        assert_eq!(list[5].scheme(), Some(Scheme::Https));
        assert_eq!(list[5].to_string(), "[::1]:10");
    }

    #[test]
    fn errors_name_the_bad_entry() {
        for (list, bad) in [
            ("a:1,b", "b"),
            ("a:1,,b:2", ""),
            ("a:0", "a:0"),
            ("a:70000", "a:70000"),
            ("::1:80", "::1:80"),
            ("ftp://a:1", "ftp://a:1"),
            ("https://http://a:1", "https://http://a:1"),
            ("https://", "https://"),
            ("bad host:1", "bad host:1"),
            ("-a:1", "-a:1"),
            ("[::1:80", "[::1:80"),
        ] {
            match parse_address_list(list) {
                Err(AddressError::Invalid { entry, .. }) => assert_eq!(entry, bad, "{list}"),
                other => panic!("{list}: {other:?}"),
            }
        }
        assert_eq!(parse_address_list("  "), Err(AddressError::Empty));
    }
}
