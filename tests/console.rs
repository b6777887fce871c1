//! The console page in headless Chromium (Debian `chromium` and `chromium-driver`,
//! driven by Python `selenium`) against a running server with a held message and a
//! delivered one: the login with the token, the queue table, a message's trace, no
//! errors in the browser's console, and screenshots at 1280×800 and 390 px wide
//! (under `target/test-artifacts/`). Chromium runs `--headless=new --no-sandbox`
//! (the tests run as root, where its sandbox cannot start).

mod common;

use common::outbound::wait_for;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const BROWSER: &str = r##"
import os, sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL, TOKEN, HELD, DELIVERED, OUT = (os.environ[k] for k in ("URL", "TOKEN", "HELD", "DELIVERED", "OUT"))
options = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
    options.add_argument(arg)
options.binary_location = "/usr/bin/chromium"
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    wait = WebDriverWait(driver, 20)
    driver.set_window_size(1280, 800)
    driver.get(URL)
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#queue tr[data-id="{HELD}"]'))[0]
    assert "held" in row.text, row.text
    assert not driver.find_elements(By.CSS_SELECTOR, f'#queue tr[data-id="{DELIVERED}"]'), "delivered mail listed"
    wait.until(lambda d: "delivered" in d.find_element(By.ID, "counters").text)
    driver.find_element(By.CSS_SELECTOR, f'#queue button[data-id="{HELD}"]').click()
    kinds = lambda d: [li.get_attribute("data-event") for li in d.find_elements(By.CSS_SELECTOR, "#trace li")]
    wait.until(lambda d: "admin" in kinds(d))
    assert kinds(driver)[:2] == ["received", "stored"], kinds(driver)
    assert "action: hold" in driver.find_element(By.ID, "trace").text, driver.find_element(By.ID, "trace").text
    driver.save_screenshot(os.path.join(OUT, "console-1280x800.png"))

    field = driver.find_element(By.ID, "trace-id")
    field.clear()
    field.send_keys(DELIVERED)
    driver.find_element(By.CSS_SELECTOR, "#trace-form button").click()
    wait.until(lambda d: "finished" in kinds(d))
    assert "delivered" in driver.find_element(By.ID, "trace").text

    driver.set_window_size(390, 844)
    width = driver.execute_script("return document.documentElement.clientWidth")
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width + 1, f"the page scrolls sideways at 390 px: {scroll} > {width}"
    driver.save_screenshot(os.path.join(OUT, "console-390.png"))

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    print("ok")
finally:
    driver.quit()
"##;

#[test]
fn the_console_lists_held_mail_and_shows_a_trace_in_chromium() {
    let missing: Vec<&str> =
        ["/usr/bin/chromium", "/usr/bin/chromedriver"].into_iter().filter(|p| !PathBuf::from(p).exists()).collect();
    assert!(missing.is_empty(), "Chromium is needed (Debian chromium, chromium-driver): {missing:?} missing");
    assert!(common::outbound::python_has("selenium"), "Python selenium is needed (scripts/test installs it with pip)");
    let dead = free_port();
    let t = Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1h\"]\n\n[relay.routes]\n\"hold.test\" = \"127.0.0.1:{dead}\"\n"
    ));
    let send = |rcpt: &str| {
        let out = t.py(&format!(
            "s = connect()\nprint(send(s, 'sender@localhost', [{rcpt:?}], 'Subject: <b>console</b>\\r\\n\\r\\nhello\\r\\n'))\ns.quit()\n"
        ));
        out.assert_success("send with smtplib");
        queue_id(out.stdout.trim()).expect("queue id")
    };
    let delivered = send("someone@localhost");
    let held = send("x@hold.test");
    let token = t.admin_token();
    let curl = |args: &[&str]| t.curl(args);
    wait_for(
        Duration::from_secs(30),
        "both messages tried",
        || {
            let out = t.tern_cmd(&["queue", "trace", &held]);
            let done = t.tern_cmd(&["queue", "trace", &delivered]);
            (out.stdout.contains("attempt") && done.stdout.contains("finished")).then_some(())
        },
        || t.logs(),
    );
    let auth = format!("Authorization: Bearer {token}");
    curl(&["-f", "-X", "POST", "-H", &auth, &format!("{}/api/v1/queue/{held}/hold", t.admin_url())])
        .assert_success("hold");

    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&out_dir).expect("artefact directory");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", BROWSER])
        .env("URL", format!("{}/", t.admin_url()))
        .env("TOKEN", &token)
        .env("HELD", &held)
        .env("DELIVERED", &delivered)
        .env("OUT", &out_dir);
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.success() && out.stdout.contains("ok"), "the browser check failed:\n{}\n{}", out.all(), t.logs());
    for name in ["console-1280x800.png", "console-390.png"] {
        let size = std::fs::metadata(out_dir.join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{name} was not saved");
    }
}
