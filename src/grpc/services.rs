//! The gRPC services as the server mounts them: MailQueue and QueueAdmin
//! behind their interceptors, health and reflection. The server wires
//! these without knowing the protobuf types.

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::grpc::admin_api::QueueAdminService;
use crate::grpc::api::{Api, MailQueueService};
use crate::intake::auth::{Authenticator, Role};
use crate::pb;

/// The largest QueueAdmin request (its calls are small; a bigger one is an error).
const ADMIN_MAX_REQUEST: usize = 4 << 20;

/// Health, reflection and the two services on `builder`. Health and
/// reflection answer anyone (probes, grpcurl); MailQueue and QueueAdmin
/// only authenticated callers with the role.
pub fn router<H: Health>(
    builder: tonic::transport::Server,
    api: Api,
    auth: Arc<Authenticator>,
    max_request: usize,
    health: HealthServer<H>,
) -> Router {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptors are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("embedded descriptors are valid");
    let mail_queue = pb::mail_queue_server::MailQueueServer::new(MailQueueService(api.clone()))
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_request);
    let queue_admin = pb::queue_admin_server::QueueAdminServer::new(QueueAdminService(api))
        .max_decoding_message_size(ADMIN_MAX_REQUEST)
        .max_encoding_message_size(max_request);
    let mut builder = builder;
    builder
        .add_service(InterceptedService::new(
            mail_queue,
            crate::intake::auth::interceptor(auth.clone(), Role::Enqueue),
        ))
        .add_service(InterceptedService::new(
            queue_admin,
            crate::intake::auth::interceptor(auth, Role::Admin),
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
}

/// Whether `mailspool.v1.MailQueue` reports SERVING.
pub async fn set_serving(health: &HealthReporter, serving: bool) {
    if serving {
        health
            .set_serving::<pb::mail_queue_server::MailQueueServer<MailQueueService>>()
            .await;
    } else {
        health
            .set_not_serving::<pb::mail_queue_server::MailQueueServer<MailQueueService>>()
            .await;
    }
}
