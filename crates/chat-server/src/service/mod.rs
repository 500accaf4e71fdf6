//! The `chat.v1.ChatService` implementation: one module per group of RPCs, each a thin
//! layer of validation and authorisation over the shared [`Store`].

mod accounts;
mod health_check;
mod messages;
mod session;
mod subscribe;

use std::{pin::Pin, sync::Arc, time::Duration};

use chat_proto::v1::{self as pb, chat_service_server::ChatService as ChatServiceApi};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{health::ReplicaHealth, hub::Hub, password::PasswordHasherPool, store::Store};

/// Settings the RPCs need from the server configuration.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// The largest message text, in bytes.
    pub max_message_bytes: u32,
    /// Fault injection: a delay before every RPC (tests and benchmarks only).
    pub inject_delay: Option<Duration>,
}

/// One replica's chat service. Cloning is cheap; all clones share the same state.
#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn Store>,
    passwords: PasswordHasherPool,
    /// Password checks of one account take turns within this replica (throttling).
    password_checks: Arc<crate::throttle::CheckTurns>,
    hub: Hub,
    health: ReplicaHealth,
    settings: Arc<ServiceSettings>,
    shutdown: CancellationToken,
}

impl ChatService {
    /// A service over `store` that pushes live messages from `hub` and ends its
    /// streams when `shutdown` is cancelled.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        health: ReplicaHealth,
        settings: ServiceSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            passwords: PasswordHasherPool::default(),
            password_checks: Arc::default(),
            hub,
            health,
            settings: Arc::new(settings),
            shutdown,
        }
    }

    /// Applies the injected fault delay, if any.
    async fn injected_delay(&self) {
        if let Some(delay) = self.settings.inject_delay {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The stream type of `Subscribe`.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl ChatServiceApi for ChatService {
    async fn health_check(
        &self,
        request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        self.injected_delay().await;
        self.health_check(request).await
    }

    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        self.injected_delay().await;
        self.create_account(request).await
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.injected_delay().await;
        self.login(request).await
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.injected_delay().await;
        self.logout(request).await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.injected_delay().await;
        self.list_accounts(request).await
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        self.injected_delay().await;
        self.send_message(request).await
    }

    async fn fetch_messages(
        &self,
        request: Request<pb::FetchMessagesRequest>,
    ) -> Result<Response<pb::FetchMessagesResponse>, Status> {
        self.injected_delay().await;
        self.fetch_messages(request).await
    }

    async fn ack_messages(
        &self,
        request: Request<pb::AckMessagesRequest>,
    ) -> Result<Response<pb::AckMessagesResponse>, Status> {
        self.injected_delay().await;
        self.ack_messages(request).await
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.injected_delay().await;
        self.subscribe(request).await
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        self.injected_delay().await;
        self.delete_account(request).await
    }
}

/// Converts a stored message to its wire form.
fn to_wire(message: &crate::store::StoredMessage) -> pb::Message {
    pb::Message {
        id: message.id,
        sequence: message.sequence,
        sender: message.sender.clone(),
        recipient: message.recipient.clone(),
        text: message.text.clone(),
        sent_at_unix_ms: message.sent_at_unix_ms,
    }
}
