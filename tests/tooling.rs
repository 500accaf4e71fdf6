//! Standard gRPC tooling against a real `chat-server`: server reflection under both of
//! its names (`grpc.reflection.v1` and `grpc.reflection.v1alpha`), read with clients
//! generated from each version's own `reflection.proto` (as grpcurl, grpcui and Python
//! grpcio's reflection client read it), not with anything from the server's code.

use chat_testkit::{Replica, SharedStore};
use futures::StreamExt;
use prost::Message as _;

/// Every service a replica serves, as reflection must list it.
const SERVICES: [&str; 4] = [
    chat_proto::CHAT_SERVICE_NAME,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The RPCs of `chat.v1.ChatService`, as its proto declares them.
const CHAT_RPCS: [&str; 10] = [
    "HealthCheck",
    "CreateAccount",
    "Login",
    "Logout",
    "ListAccounts",
    "SendMessage",
    "FetchMessages",
    "AckMessages",
    "Subscribe",
    "DeleteAccount",
];

/// A test that lists the services and describes `chat.v1.ChatService` through the
/// reflection client of `tonic_reflection::pb::$version` (the message types differ
/// between versions, the questions and answers do not).
macro_rules! reflection_lists_and_describes {
    ($test:ident, $version:ident) => {
        #[tokio::test]
        async fn $test() {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };

            let store = SharedStore::new();
            let replica = Replica::start(&store);
            let mut reflection = ServerReflectionClient::new(replica.channel().await);
            let ask = |question| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(question),
            };
            let questions = [
                ask(MessageRequest::ListServices(String::new())),
                ask(MessageRequest::FileContainingSymbol(
                    chat_proto::CHAT_SERVICE_NAME.into(),
                )),
            ];
            let mut answers = reflection
                .server_reflection_info(futures::stream::iter(questions))
                .await
                .expect("reflection answers")
                .into_inner();
            let mut next = async || {
                let answer = answers.next().await.expect("an answer").expect("an answer");
                answer.message_response.expect("a response")
            };

            let MessageResponse::ListServicesResponse(list) = next().await else {
                panic!("not a service list");
            };
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            let mut expected = SERVICES.map(String::from).to_vec();
            expected.sort();
            assert_eq!(names, expected);

            let MessageResponse::FileDescriptorResponse(files) = next().await else {
                panic!("not a file descriptor");
            };
            assert_rpcs_described(&files.file_descriptor_proto);
        }
    };
}

reflection_lists_and_describes!(
    reflection_v1_lists_services_and_describes_the_chat_service,
    v1
);
reflection_lists_and_describes!(
    reflection_v1alpha_lists_services_and_describes_the_chat_service,
    v1alpha
);

/// Decodes the files reflection sent for `chat.v1.ChatService` and checks that one of
/// them declares the service with every RPC of its proto.
fn assert_rpcs_described(encoded_files: &[Vec<u8>]) {
    let files: Vec<prost_types::FileDescriptorProto> = encoded_files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decode"))
        .collect();
    let (package, service) = files
        .iter()
        .flat_map(|file| file.service.iter().map(move |s| (file.package(), s)))
        .find(|(_, service)| service.name() == "ChatService")
        .expect("a file declares ChatService");
    assert_eq!(package, "chat.v1");
    let rpcs: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(rpcs, CHAT_RPCS);
    let subscribe = service
        .method
        .iter()
        .find(|m| m.name() == "Subscribe")
        .expect("Subscribe");
    assert!(
        subscribe.server_streaming(),
        "Subscribe streams its answers"
    );
}
