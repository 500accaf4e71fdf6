//! Connecting to the cluster through chat-lb-client, and logging in.

use std::io::IsTerminal;

use chat_lb_client::{Balancer, RetrySafe};
use chat_proto::v1::{LoginRequest, chat_service_client::ChatServiceClient};
use tonic::{Request, metadata::MetadataValue};

use crate::{
    args::GlobalArgs,
    error::{CliError, ErrorKind},
};

/// The chat client over the balancer.
pub type ChatClient = ChatServiceClient<Balancer>;

/// Every chat RPC is safe to retry on another replica (see chat.proto).
const CHAT_METHODS: &str = "/chat.v1.ChatService/";

/// Builds the balancer from the global flags. A malformed `--servers` entry is
/// reported naming the entry.
pub fn balancer(args: &GlobalArgs) -> Result<Balancer, CliError> {
    let settings = &args.balancer;
    Balancer::builder()
        .addresses(&args.servers)
        .retry_safe(RetrySafe::prefix(CHAT_METHODS))
        .timeout(settings.timeout)
        .per_try_timeout(settings.try_timeout)
        .probe_interval(settings.health_interval)
        .probe_timeout(settings.health_timeout)
        .unhealthy_threshold(settings.unhealthy_threshold)
        .connect_timeout(settings.connect_timeout)
        .http2_keepalive(Some(settings.keepalive), settings.keepalive)
        .build()
        .map_err(|error| match error {
            chat_lb_client::BuildError::Address(error) => {
                CliError::usage(format!("--servers: {error}"))
            }
            other => CliError::usage(other.to_string()),
        })
}

/// A logged-in user: the client and the session token.
#[derive(Clone)]
pub struct Session {
    /// The balanced chat client.
    pub client: ChatClient,
    /// The username as registered.
    pub username: String,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Session {
    /// Wraps a request message with this session's token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(chat_proto::AUTHORIZATION_HEADER, self.token.clone());
        request
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
    let token = format!("Bearer {}", response.token)
        .parse()
        .map_err(|_| CliError::new(ErrorKind::Other, "the server sent a malformed token"))?;
    Ok(Session {
        client,
        username: response.username,
        token,
    })
}
