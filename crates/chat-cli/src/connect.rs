//! Connecting to the cluster through chat-lb-client, and logging in.

use std::io::IsTerminal;

use chat_lb_client::{
    Balancer, BuildError, Builder, PemRole, RetrySafe, Scheme, TlsConfigError, parse_address_list,
};
use chat_proto::v1::{LoginRequest, LogoutRequest, chat_service_client::ChatServiceClient};
use tonic::{Request, metadata::MetadataValue};

use crate::{
    args::{GlobalArgs, TlsArgs},
    error::{CliError, ErrorKind},
};

/// The chat client over the balancer.
pub type ChatClient = ChatServiceClient<Balancer>;

/// Every chat RPC is safe to retry on another replica (see chat.proto).
const CHAT_METHODS: &str = "/chat.v1.ChatService/";

/// Builds the balancer from the global flags. A malformed `--servers` entry is
/// reported naming the entry; a TLS file that cannot be used, naming the flag
/// and the file.
pub fn balancer(args: &GlobalArgs) -> Result<Balancer, CliError> {
    let settings = &args.balancer;
    let builder = Balancer::builder()
        .addresses(&args.servers)
        .retry_safe(RetrySafe::prefix(CHAT_METHODS))
        .timeout(settings.timeout)
        .per_try_timeout(settings.try_timeout)
        .probe_interval(settings.health_interval)
        .probe_timeout(settings.health_timeout)
        .unhealthy_threshold(settings.unhealthy_threshold)
        .connect_timeout(settings.connect_timeout)
        .http2_keepalive(Some(settings.keepalive), settings.keepalive);
    with_tls(builder, &args.servers, &args.tls)?
        .build()
        .map_err(|error| match error {
            BuildError::Address(error) => CliError::usage(format!("--servers: {error}")),
            BuildError::Tls(error) => tls_usage(&args.tls, error),
            other => CliError::usage(other.to_string()),
        })
}

/// Applies the TLS flags. TLS is on with any of them or with an `https://`
/// server; trusted are the `--ca-cert` CA, else the system's roots (so
/// `--servers https://...` alone works as a browser would), and the system's
/// roots too with `--tls`.
fn with_tls(mut builder: Builder, servers: &str, tls: &TlsArgs) -> Result<Builder, CliError> {
    let identity = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(CliError::usage(
                "--client-cert needs --client-key (mutual TLS needs the certificate's key)",
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::usage(
                "--client-key needs --client-cert (mutual TLS needs the certificate too)",
            ));
        }
    };
    // A malformed list is reported by `build`, naming the entry.
    let https = parse_address_list(servers)
        .is_ok_and(|targets| targets.iter().any(|t| t.scheme() == Some(Scheme::Https)));
    let on = tls.tls
        || https
        || tls.ca_cert.is_some()
        || identity.is_some()
        || tls.tls_server_name.is_some();
    if let Some(ca) = &tls.ca_cert {
        builder = builder.tls_ca_file(ca);
    }
    if tls.tls || (on && tls.ca_cert.is_none()) {
        builder = builder.tls_system_roots();
    }
    if let Some((cert, key)) = identity {
        builder = builder.tls_identity_files(cert, key);
    }
    if let Some(name) = &tls.tls_server_name {
        builder = builder.tls_server_name(name);
    }
    Ok(builder)
}

/// A TLS setting that cannot work, as a usage error naming the flag at fault.
fn tls_usage(tls: &TlsArgs, error: TlsConfigError) -> CliError {
    let role_flag = |role: PemRole| match role {
        PemRole::Ca => "--ca-cert",
        PemRole::ClientCert => "--client-cert",
        PemRole::ClientKey => "--client-key",
    };
    let flag = match &error {
        TlsConfigError::Unreadable { role, .. }
        | TlsConfigError::NoPem { role, .. }
        | TlsConfigError::Invalid { role, .. } => role_flag(*role),
        TlsConfigError::KeyMismatch { .. } => "--client-key",
        TlsConfigError::ServerName { .. } if tls.tls_server_name.is_some() => "--tls-server-name",
        TlsConfigError::SystemRoots { .. } => {
            return CliError::usage(format!("{error}: pass --ca-cert FILE"));
        }
        TlsConfigError::ServerName { .. }
        | TlsConfigError::MixedSchemes { .. }
        | TlsConfigError::PlaintextWithTls { .. } => "--servers",
        _ => return CliError::usage(error.to_string()),
    };
    CliError::usage(format!("{flag}: {error}"))
}

/// A logged-in user: the client and the session token.
#[derive(Clone)]
pub struct Session {
    /// The balanced chat client.
    pub client: ChatClient,
    /// The username as registered.
    pub username: String,
    /// When the server said the session expires (ms since the Unix epoch; 0: unknown).
    pub expires_at_unix_ms: i64,
    /// True for a session `chat-cli login` keeps: [`Session::finish`] leaves it open.
    pub kept: bool,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Session {
    /// A session for a token the server gave earlier.
    pub fn with_token(
        client: ChatClient,
        username: String,
        token: &str,
        expires_at_unix_ms: i64,
    ) -> Result<Self, CliError> {
        let token = format!("Bearer {token}")
            .parse()
            .map_err(|_| CliError::new(ErrorKind::Other, "the server sent a malformed token"))?;
        Ok(Self {
            client,
            username,
            expires_at_unix_ms,
            kept: false,
            token,
        })
    }

    /// The session token, as the server gave it.
    pub fn token(&self) -> &str {
        let bearer = self.token.to_str().unwrap_or_default();
        bearer.strip_prefix("Bearer ").unwrap_or(bearer)
    }

    /// Wraps a request message with this session's token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(chat_proto::AUTHORIZATION_HEADER, self.token.clone());
        request
    }

    /// Ends the session on the server (a session already gone succeeds too).
    pub async fn logout(&self) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .logout(self.request(LogoutRequest {}))
            .await
            .map(drop)
    }

    /// Ends the session when the command is done with it, unless it is kept, so
    /// that scripts do not pile up sessions; best effort, bounded by the
    /// balancer's timeout.
    pub async fn finish(&self) {
        if !self.kept {
            let _ = self.logout().await;
        }
    }
}

/// The username from `--user`, or a usage error.
pub fn username(args: &GlobalArgs) -> Result<String, CliError> {
    args.user
        .clone()
        .filter(|user| !user.is_empty())
        .ok_or_else(|| CliError::usage("no user: pass --user NAME or set CHAT_USER"))
}

/// The password from `--password`, or asked for without echo on a terminal.
pub fn password(args: &GlobalArgs) -> Result<String, CliError> {
    if let Some(password) = &args.password {
        return Ok(password.clone());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "no password: pass --password or set CHAT_PASSWORD",
        ));
    }
    rpassword::prompt_password("password: ").map_err(|error| {
        CliError::new(
            ErrorKind::Other,
            format!("cannot read the password: {error}"),
        )
    })
}

/// Logs in with the global flags' user and password.
pub async fn login(args: &GlobalArgs, client: ChatClient) -> Result<Session, CliError> {
    let username = username(args)?;
    let password = password(args)?;
    login_as(client, &username, &password).await
}

/// Logs in as the given user.
pub async fn login_as(
    mut client: ChatClient,
    username: &str,
    password: &str,
) -> Result<Session, CliError> {
    let response = client
        .login(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await?
        .into_inner();
    Session::with_token(
        client,
        response.username,
        &response.token,
        response.expires_at_unix_ms,
    )
}
