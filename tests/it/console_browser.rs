//! The console in a real headless browser (Debian's `chromium` driven through `chromedriver`
//! by a WebDriver client): an operator opens the failures page, clicks retry, the row is gone
//! and the event is on the events page. Screenshots are written to `target/console/`.
//!
//! `scripts/test` installs chromium and chromedriver when missing and then sets
//! `DIONYSUS_BROWSER=required`; without them (and without that variable) the test says so and
//! skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use super::http::Served;

const TOPIC: &str = "console_browser_things";

#[derive(serde::Deserialize)]
struct Thing {
    synced_id: i64,
}

/// The handler the failure row names: acknowledges every thing.
#[dionysus::consume(topic = "console_browser_things", event = "thing_created", checkpoint)]
async fn thing_created(ctx: &mut dionysus::Context<'_>, thing: Thing) -> dionysus::Result<()> {
    ctx.ack(thing.synced_id.to_string(), chrono::Utc::now());
    Ok(())
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

async fn driver() -> Option<(Driver, PathBuf)> {
    let required = std::env::var("DIONYSUS_BROWSER").is_ok_and(|value| value == "required");
    let (Some(chromedriver), Some(chromium)) = (find(&["chromedriver"]), find(&["chromium", "chromium-browser"]))
    else {
        assert!(!required, "DIONYSUS_BROWSER=required but chromium or chromedriver is not on PATH");
        eprintln!(
            "SKIPPED console_browser: chromium and chromedriver are not installed (scripts/test installs them: \
             apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver { child, port };
    dionysus_tests::eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
    Some((driver, chromium))
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn an_operator_retries_a_failure_from_the_console() {
    let Some((driver, chromium)) = driver().await else { return };
    let served = Served::start(None, None).await;
    let entity = 4242;
    let message =
        dionysus::testing::envelope("Thing", "thing_created", json!({ "id": entity, "name": "<b>widget</b>" }));
    let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
    let listener = format!("{}::thing_created", module_path!());
    served
        .sql(&format!(
            "INSERT INTO dionysus_event_failures (id, topic, group_id, listener, entity_id, event_type, event_version, \
             checksum, payload, metadata, error_class, error_message, attempts, \"partition\", \"offset\") VALUES \
             (31, '{TOPIC}', 'storefront', '{listener}', '{entity}', 'thing_created', NULL, 'browser-checksum', \
              '{}'::jsonb, '{{}}', 'Timeout', 'the warehouse did not answer', 3, 0, 17)",
            payload.replace('\'', "''")
        ))
        .await;

    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap();
    let outcome = scenario(&browser, served.address, entity).await;
    let _ = browser.close().await;
    outcome.unwrap();
}

async fn scenario(browser: &fantoccini::Client, address: SocketAddr, entity: i64) -> Result<(), String> {
    fn fail(what: &'static str) -> impl Fn(fantoccini::error::CmdError) -> String {
        move |error| format!("{what}: {error}")
    }
    let dir = screenshots();
    browser.goto(&format!("http://{address}/console/failures")).await.map_err(fail("opening the failures page"))?;
    let row = browser.find(Locator::Css("#failure-31")).await.map_err(fail("finding the failure row"))?;
    let text = row.text().await.map_err(fail("reading the row"))?;
    if !text.contains("the warehouse did not answer") {
        return Err(format!("the failure row lacks its error: {text}"));
    }
    std::fs::write(dir.join("failures-before-retry.png"), browser.screenshot().await.map_err(fail("screenshot"))?)
        .map_err(|error| error.to_string())?;
    let retry = row.find(Locator::Css("button")).await.map_err(fail("finding the retry button"))?;
    retry.click().await.map_err(fail("clicking retry"))?;
    let notice = browser.wait().for_element(Locator::Id("notice")).await.map_err(fail("waiting for the notice"))?;
    let notice = notice.text().await.map_err(fail("reading the notice"))?;
    if !notice.contains("Retried failure 31: the handler succeeded") {
        return Err(format!("unexpected notice: {notice}"));
    }
    let left = browser.find_all(Locator::Css("#failure-31")).await.map_err(fail("looking for the row"))?;
    if !left.is_empty() {
        return Err("the retried failure is still listed".to_owned());
    }
    std::fs::write(dir.join("failures-after-retry.png"), browser.screenshot().await.map_err(fail("screenshot"))?)
        .map_err(|error| error.to_string())?;
    browser
        .goto(&format!("http://{address}/console/events?topic={TOPIC}"))
        .await
        .map_err(fail("opening the events page"))?;
    let events = browser.find(Locator::Css("#events")).await.map_err(fail("finding the events table"))?;
    let text = events.text().await.map_err(fail("reading the events"))?;
    if !(text.contains(&entity.to_string()) && text.contains("thing_created") && text.contains("storefront")) {
        return Err(format!("the event is not on the events page: {text}"));
    }
    std::fs::write(dir.join("events-after-retry.png"), browser.screenshot().await.map_err(fail("screenshot"))?)
        .map_err(|error| error.to_string())?;
    Ok(())
}
