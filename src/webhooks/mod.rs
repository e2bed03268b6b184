//! Webhooks: each `[[webhooks]]` endpoint is another reader of the event
//! log (`spool::events`), with its own durable cursor, posting Standard
//! Webhooks requests (`sign`, `payload`) one event at a time, in order
//! (`endpoint`). Nothing here is on the path of mail: an endpoint that is
//! down or slow only falls behind.

pub mod endpoint;
pub mod payload;
pub mod sign;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::WebhookConfig;
use crate::model::now_ms;
use crate::observe::overview::WebhookFigures;
use crate::spool::Store;

use endpoint::Endpoint;

/// The configured endpoints.
#[derive(Clone, Default)]
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
}

impl Webhooks {
    pub fn new(configs: &[WebhookConfig], node_id: &str) -> Result<Webhooks, String> {
        let endpoints = configs
            .iter()
            .map(|c| Endpoint::new(c.clone(), node_id).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Webhooks { endpoints })
    }

    /// Starts a task per endpoint; each saves its cursor and ends on `stop`.
    pub fn start(&self, store: &Store, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.endpoints
            .iter()
            .map(|e| tokio::spawn(e.clone().run(store.clone(), stop.clone())))
            .collect()
    }

    /// Each endpoint's figures, in configuration order.
    pub fn figures(&self, last_visible: u64) -> Vec<WebhookFigures> {
        let now = now_ms();
        self.endpoints
            .iter()
            .map(|e| e.figures(last_visible, now))
            .collect()
    }
}
