//! The chat service's request paths that the layers around the router tell apart
//! (load shedding in [`crate::shed`], fault injection in [`crate::fault`]).

/// The path prefix of every `chat.v1.ChatService` call.
pub const CHAT_SERVICE: &str = "/chat.v1.ChatService/";
/// The chat service's health check: never shed, never faulted.
pub const HEALTH_CHECK: &str = "/chat.v1.ChatService/HealthCheck";
/// The chat service's live stream: never counted against the in-flight limit.
pub const SUBSCRIBE: &str = "/chat.v1.ChatService/Subscribe";

/// Whether `path` is a chat call other than its health check (health checks and
/// reflection always answer truthfully and at once).
pub fn is_chat_work(path: &str) -> bool {
    path.starts_with(CHAT_SERVICE) && path != HEALTH_CHECK
}
