//! The rentals example's binary: the scripted demo, or the dionysus command line with the
//! example's declarations linked in — which is how an application embeds it.
//!
//! Run with: `scripts/demo` (starts a broker the way the tests do), `scripts/demo --embedded`
//! (an embedded Kafka cluster in the process: only PostgreSQL needed), or, with a broker and
//! PostgreSQL running, `DIONYSUS_SEED_BROKER=127.0.0.1:9092 cargo run -p dionysus-example-rentals`.
//!
//! Without arguments (or with `demo`, `--embedded`, `--database-prefix NAME`) the binary runs
//! the scripted demo in one process: it creates both databases, the topics, starts the relay
//! and the consumer, makes a series of changes, runs a genesis and checks that the replica
//! matches the source. Any other arguments go to the dionysus command line:
//!
//! ```text
//! cargo run -p dionysus-example-rentals -- --help
//! cargo run -p dionysus-example-rentals -- --database-url postgres://postgres@127.0.0.1/dionysus_rentals_producer relay
//! cargo run -p dionysus-example-rentals -- --database-url postgres://postgres@127.0.0.1/dionysus_rentals_consumer consume
//! ```

use std::process::ExitCode;

use dionysus_example_rentals::demo;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("demo" | "--embedded" | "--database-prefix") => {
            match demo::Options::parse(&args) {
                Ok(options) => demo::run(options).await,
                Err(problem) => {
                    eprintln!("error: {problem}\nusage: dionysus-example-rentals [demo] [--embedded] [--database-prefix NAME]");
                    ExitCode::from(2)
                }
            }
        }
        Some(_) => dionysus::cli::run().await,
    }
}
