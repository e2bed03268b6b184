//! `mailspool token create`: a new client token and its `[[clients]]` entry.

use super::*;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token (once) and the [[clients]] entry holding
    /// its hash for the server's config.
    Create {
        /// The client's name (in logs, stats and metrics).
        #[arg(long)]
        name: String,
        /// enqueue (MailQueue) and/or admin (QueueAdmin); repeatable.
        #[arg(long = "role", required = true, value_parser = ["enqueue", "admin"])]
        roles: Vec<String>,
    },
}

/// `mailspool token create`: the token goes to stdout once; the server
/// only ever sees its hash.
pub fn token(a: TokenArgs) -> ClientResult {
    let TokenCommand::Create { name, roles } = a.command;
    let token = crate::intake::auth::new_token();
    let hash = crate::intake::auth::token_hash(&token);
    let parsed: Vec<crate::intake::auth::Role> = roles
        .iter()
        .map(|r| match r.as_str() {
            "admin" => crate::intake::auth::Role::Admin,
            _ => crate::intake::auth::Role::Enqueue,
        })
        .collect();
    let entry = crate::intake::auth::ClientConfig::with_token(&name, hash.clone(), &parsed);
    entry.validate().map_err(|e| format!("--{e}"))?;
    let roles = roles
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "token for `{name}` (shown only now; give it to the service, e.g. in MAILSPOOL_TOKEN):"
    );
    println!("{token}");
    println!();
    println!("add to the server's config (the hash only), then reload it (SIGHUP):");
    println!("[[clients]]");
    println!("name = \"{name}\"");
    println!("token_sha256 = \"{hash}\"");
    println!("roles = [{roles}]");
    Ok(())
}
