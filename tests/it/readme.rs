//! The README, followed as a reader follows it. Its section "Your own app" is written into a
//! fresh directory, file by file from its code blocks, with the one change a reader makes
//! (the `path` of the dionysus dependency); its shell steps run in order against a database
//! of their own and the test broker, until one product made in the shop's table arrives in
//! the storefront's replica. Every other ```rust block of the README is compiled in the same
//! project, one module per block, against the same `Cargo.toml`: a sample cannot use what
//! the reader's dependencies do not bring.
//!
//! Building reuses the workspace's compiled dependencies: the project gets the workspace's
//! `Cargo.lock`, toolchain file, cargo settings and profiles, and builds offline into the
//! same target directory as this test binary, so only dionysus (as a dependency, with the
//! README's features), its macros and the app are compiled; the test prints how long the
//! build took and what it compiled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dionysus_tests::{brokers, unique_name, TestDb};

/// The section of the README a reader follows to build an application of their own.
const SECTION: &str = "Your own app";

/// The dependency line as the README writes it; the test points it at this workspace.
const DIONYSUS_PATH: &str = r#"path = "../dionysus/crates/dionysus""#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// A fenced code block of the README: its language, text, and the `## ` section it is in.
#[derive(Debug)]
struct Block {
    lang: String,
    text: String,
    section: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in readme.lines() {
        match &mut open {
            None => {
                if let Some(title) = line.strip_prefix("## ") {
                    section = title.trim().to_owned();
                } else if let Some(lang) = line.strip_prefix("```") {
                    open = Some((lang.trim().to_owned(), String::new()));
                }
            }
            Some((lang, text)) => {
                if line.trim_end() == "```" {
                    blocks.push(Block {
                        lang: std::mem::take(lang),
                        text: std::mem::take(text),
                        section: section.clone(),
                    });
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "the README ends inside a code block");
    blocks
}

/// The file a block of the app is, from its first line (`// src/lib.rs`, `# Cargo.toml`).
fn file_of(block: &Block) -> Option<String> {
    let first = block.text.lines().next()?;
    let name = first.strip_prefix("// ").or_else(|| first.strip_prefix("# "))?.trim();
    (name == "Cargo.toml" || (name.starts_with("src/") && name.ends_with(".rs"))).then(|| name.to_owned())
}

/// One shell command of the steps: its text (comments removed) and whether it runs in the
/// background (`&`).
#[derive(Debug)]
struct Step {
    command: String,
    background: bool,
}

/// The commands of a shell block: a command ends at a newline outside quotes; `# …` outside
/// quotes is a comment.
fn steps(script: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut command = String::new();
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = ' ';
    for c in script.chars() {
        match (quote, c) {
            (_, '\n') if quote.is_none() => {
                let text = command.trim();
                if !text.is_empty() {
                    let background = text.ends_with('&') && !text.ends_with("&&");
                    let text = text.trim_end_matches('&').trim_end();
                    steps.push(Step { command: text.to_owned(), background });
                }
                command.clear();
                comment = false;
            }
            _ if comment => {}
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '\'' | '"') => {
                quote = Some(c);
                command.push(c);
            }
            (Some(open), _) if c == open => {
                quote = None;
                command.push(c);
            }
            _ => command.push(c),
        }
        previous = c;
    }
    assert!(command.trim().is_empty() && quote.is_none(), "the shell block ends inside a command: {command}");
    steps
}

/// The project's processes, with the file their stderr goes to: killed if the test fails
/// half-way.
struct Background(Vec<(String, Child, PathBuf)>);

impl Drop for Background {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command in `dir` with `env`; its output.
fn shell(dir: &Path, env: &[(&str, String)], command: &str) -> Output {
    Command::new("bash")
        .args(["-o", "pipefail", "-c", command])
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .unwrap_or_else(|error| panic!("bash could not run `{command}`: {error}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The workspace's profile settings (every `[profile.…]` table of its `Cargo.toml`), for the
/// project's `.cargo/config.toml`: same settings, same compiled dependencies.
fn profiles(manifest: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = line.starts_with("[profile.");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes the project: the app's files from the README, every other Rust block as a module
/// of `examples/readme_samples.rs`, and the workspace's lock file, toolchain and profiles.
/// Returns the expected `replica-ddl` output and the shell steps.
fn write_project(dir: &Path, readme: &str) -> (String, Vec<Step>) {
    let root = workspace();
    let mut ddl = None;
    let mut script = None;
    let mut samples = String::from(
        "//! Every Rust block of the README outside the app, one module each.\n\
         #![deny(warnings)]\n#![allow(dead_code)]\n\nfn main() {}\n",
    );
    let mut files = Vec::new();
    for (index, block) in blocks(readme).iter().enumerate() {
        let in_app = block.section == SECTION;
        let lang = block.lang.split(',').next().unwrap_or_default();
        match (in_app, lang, file_of(block)) {
            (true, "toml" | "rust", Some(name)) => {
                let mut text = block.text.clone();
                if name == "Cargo.toml" {
                    assert!(text.contains(DIONYSUS_PATH), "the README's Cargo.toml names dionysus by {DIONYSUS_PATH}");
                    let path = root.join("crates/dionysus");
                    text = text.replace(DIONYSUS_PATH, &format!("path = {:?}", path.display().to_string()));
                }
                let path = dir.join(&name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, text).unwrap();
                files.push(name);
            }
            (true, "sql", _) => assert!(ddl.replace(block.text.clone()).is_none(), "one sql block in {SECTION}"),
            (true, "sh", _) => assert!(script.replace(block.text.clone()).is_none(), "one sh block in {SECTION}"),
            (true, "rust" | "toml", None) => {
                panic!("a block of {SECTION} names no file on its first line:\n{}", block.text)
            }
            (false, "rust", _) => {
                samples.push_str(&format!(
                    "\n/// The README's block {index} (section \"{}\").\nmod block_{index} {{\n",
                    block.section
                ));
                samples.push_str(&block.text);
                samples.push_str("}\n");
            }
            _ => {}
        }
    }
    for expected in ["Cargo.toml", "src/lib.rs", "src/main.rs", "src/bin/relay.rs", "src/bin/consumer.rs"] {
        assert!(files.iter().any(|file| file == expected), "{SECTION} has no {expected}: {files:?}");
    }
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    std::fs::write(dir.join("examples/readme_samples.rs"), samples).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::copy(root.join("rust-toolchain.toml"), dir.join("rust-toolchain.toml")).unwrap();
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    let mut config = std::fs::read_to_string(root.join(".cargo/config.toml")).unwrap_or_default();
    config.push('\n');
    config.push_str(&profiles(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()));
    // The workspace's own crates are dependencies here; build them unoptimised, as the
    // workspace builds its members, which compiles them fastest.
    config.push_str(
        "\n[profile.dev.package.dionysus]\nopt-level = 0\n\n[profile.dev.package.dionysus-macros]\nopt-level = 0\n",
    );
    std::fs::write(dir.join(".cargo/config.toml"), config).unwrap();
    let ddl = ddl.unwrap_or_else(|| panic!("{SECTION} shows no replica table (a sql block)"));
    let script = script.unwrap_or_else(|| panic!("{SECTION} has no steps (a sh block)"));
    (ddl, steps(&script))
}

/// The target directory this test binary was built into (`<target>/debug/deps/it-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("the test binary sits in <target>/<profile>/deps").to_path_buf()
}

#[test]
fn the_readme_app_built_in_a_fresh_directory_gets_a_product_into_the_replica() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let dir = std::env::temp_dir().join(unique_name("dionysus_readme"));
    std::fs::create_dir_all(&dir).unwrap();
    let (expected_ddl, steps) = write_project(&dir, &readme);
    eprintln!("the README's app is in {} (removed when the test passes)", dir.display());
    assert!(
        Command::new("psql").arg("--version").output().is_ok_and(|output| output.status.success()),
        "the README's steps use psql, PostgreSQL's client: install it (apt-get install postgresql-client)"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::create());
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("DIONYSUS_SEED_BROKER", brokers()),
        ("DIONYSUS_CLIENT_ID", unique_name("readme")),
        ("CARGO_TARGET_DIR", target_dir().display().to_string()),
        ("CARGO_NET_OFFLINE", "true".to_owned()),
        ("CARGO_TERM_COLOR", "never".to_owned()),
    ];

    // One build of every target (the steps' `cargo run`s then find them built).
    let started = Instant::now();
    let build = shell(&dir, &env, "cargo build --bins --examples");
    let built = started.elapsed();
    let log = text(&build.stderr);
    assert!(build.status.success(), "the README's app does not build:\n{log}");
    assert!(!log.contains("warning: `shop`"), "the README's app builds with warnings:\n{log}");
    let compiled: Vec<&str> = log.lines().filter_map(|line| line.trim().strip_prefix("Compiling ")).collect();
    eprintln!("README app built in {:.1} s; compiled: {}", built.as_secs_f64(), compiled.join(", "));

    let ddl = shell(&dir, &env, "cargo run --quiet -- replica-ddl");
    assert!(ddl.status.success(), "replica-ddl: {}", text(&ddl.stderr));
    assert_eq!(text(&ddl.stdout), expected_ddl, "the README's replica table is not what `replica-ddl` prints");

    let mut background = Background(Vec::new());
    let (last, steps) = steps.split_last().expect("the steps are not empty");
    for (index, step) in steps.iter().enumerate() {
        if step.background {
            let log = dir.join(format!("step-{index}.log"));
            let child = Command::new("bash")
                .args(["-c", &step.command])
                .current_dir(&dir)
                .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            background.0.push((step.command.clone(), child, log));
        } else {
            let output = shell(&dir, &env, &step.command);
            assert!(
                output.status.success(),
                "`{}` failed:\n{}{}",
                step.command,
                text(&output.stdout),
                text(&output.stderr)
            );
        }
    }

    // The last step shows the replica; it is there once the relay and the consumer did their
    // work.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let output = shell(&dir, &env, &last.command);
        let shown = text(&output.stdout);
        if output.status.success() && shown.contains("Tea") && shown.contains("450") {
            break;
        }
        if Instant::now() > deadline || background.0.iter_mut().any(|(_, child, _)| child.try_wait().unwrap().is_some())
        {
            let logs: Vec<String> =
                background.0.iter_mut().map(|(command, child, log)| stop(command, child, log)).collect();
            panic!(
                "`{}` never showed the product:\n{shown}{}\n{}",
                last.command,
                text(&output.stderr),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // SIGTERM stops both, cleanly.
    for (command, child, log) in &mut background.0 {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "`{command}` did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(status.success(), "`{command}` ended with {status} after SIGTERM:\n{log}");
    }
    background.0.clear();
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills a process of the steps and returns what it logged.
fn stop(command: &str, child: &mut Child, log: &Path) -> String {
    let _ = child.kill();
    let _ = child.wait();
    format!("--- `{command}`:\n{}", std::fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn shell_steps_are_split_on_newlines_outside_quotes_without_comments() {
    let script = "psql \"$URL\" -c 'CREATE TABLE t (a int,\n  b int)'   # a table\ncargo run --bin relay &   # in the background\necho '#' done\n";
    let steps = steps(script);
    let commands: Vec<(&str, bool)> = steps.iter().map(|step| (step.command.as_str(), step.background)).collect();
    assert_eq!(
        commands,
        [
            ("psql \"$URL\" -c 'CREATE TABLE t (a int,\n  b int)'", false),
            ("cargo run --bin relay", true),
            ("echo '#' done", false),
        ]
    );
}
