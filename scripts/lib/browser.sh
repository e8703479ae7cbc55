# shellcheck shell=bash
# Used by scripts/test: Debian's chromium and chromedriver for the console's browser test
# (tests/it/console_browser.rs), installed when missing. When they are there afterwards,
# DIONYSUS_BROWSER=required makes the test fail rather than skip if it cannot start them.

browser_present() {
  command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
}

browser_install() {
  if ! browser_present && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium and chromium-driver (the console's browser test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
      || true
  fi
  if browser_present; then
    export DIONYSUS_BROWSER=required
  else
    log "chromium and chromedriver are not installed and could not be (apt-get install chromium chromium-driver as root): the console's browser test will skip"
  fi
}
