//! The `dionysus` command line embedded as an application embeds it, with one declared topic
//! (`cli_process_items`, two partitions), for the tests that run it as a process.

use std::process::ExitCode;

/// `cli_process_items`.
#[dionysus::topic(namespace = "cli_process", name = "items", partitions = 2)]
pub struct Items;

#[tokio::main]
async fn main() -> ExitCode {
    dionysus::cli::run().await
}
