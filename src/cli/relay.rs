//! `mailspool relay pause|resume NAME…`: stop or restart sending through
//! relays by name (their mail goes to the other relays of its route, or
//! waits). Persisted by the server like lane pauses.

use clap::{Args, Subcommand};

use crate::cli::{channel, status_error, ClientArgs, ClientResult};
use crate::pb;

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: RelayCommand,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Stop sending through the relays named. Survives a restart.
    Pause(RelayNames),
    /// Send through the relays named again (all when none).
    Resume(RelayNames),
}

#[derive(Debug, Args)]
pub struct RelayNames {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Relay names as configured (`default` for the single `relay`).
    pub names: Vec<String>,
    /// Print the paused relays as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn relay(a: RelayArgs) -> ClientResult {
    let (pause, a) = match a.command {
        RelayCommand::Pause(a) => (true, a),
        RelayCommand::Resume(a) => (false, a),
    };
    let mut client = pb::queue_admin_client::QueueAdminClient::new(channel(&a.client).await?);
    let relays = a.names.clone();
    let r = if pause {
        client.pause_relay(pb::PauseRelayRequest { relays }).await
    } else {
        client.resume_relay(pb::ResumeRelayRequest { relays }).await
    }
    .map_err(status_error)?
    .into_inner();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "paused_relays": r.paused_relays })
        );
    } else if r.paused_relays.is_empty() {
        println!("relays paused: none");
    } else {
        println!("relays paused: {}", r.paused_relays.join(", "));
    }
    Ok(())
}
