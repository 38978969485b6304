//! Headless Chromium for page tests: dump the DOM after the scripts ran and
//! take a screenshot, then look at what was drawn.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Chromium binary, or None (the caller skips, or fails under CI).
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string()))
        })
}

fn base_command(bin: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        // Let the page's fetch of /metrics and the drawing finish before the dump.
        "--virtual-time-budget=8000",
        "--window-size=1280,1400",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn run_with_timeout(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chromium did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The DOM of `url` after its scripts ran.
pub fn dump_dom(bin: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = base_command(bin, profile.path());
    cmd.arg("--dump-dom").arg(url);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG screenshot of `url` written to `png`.
pub fn screenshot(bin: &Path, url: &str, png: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = base_command(bin, profile.path());
    cmd.arg(format!("--screenshot={}", png.display())).arg(url);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success() && png.exists(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bars drawn by page.js: `(chart id, data-value, width)` of every `rect.bar`.
pub fn bars(dom: &str) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let mut chart = String::new();
    let mut rest = dom;
    while let Some(pos) = rest.find('<') {
        rest = &rest[pos + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        let attr = |name: &str| -> Option<String> {
            let key = format!(" {name}=\"");
            let at = tag.find(&key)? + key.len();
            Some(tag[at..].split('"').next()?.to_string())
        };
        if tag.starts_with("svg") {
            chart = attr("id").unwrap_or_default();
        } else if tag.starts_with("rect") && attr("class").as_deref() == Some("bar") {
            let value = attr("data-value")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            let width = attr("width").and_then(|v| v.parse().ok()).unwrap_or(0.0);
            out.push((chart.clone(), value, width));
        }
    }
    out
}

/// Decodes a PNG with Python's zlib (no image crate in the tree) and returns
/// how many pixels are within a small distance of each `#rrggbb` colour.
pub fn count_colour_pixels(png: &Path, colours: &[&str]) -> Vec<u64> {
    const DECODE: &str = r#"
import sys, zlib, struct
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, idat, w, h, ctype = 8, b'', 0, 0, 0
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos+8]); body = data[pos+8:pos+8+n]; pos += 12 + n
    if kind == b'IHDR': w, h, depth, ctype = struct.unpack('>IIBB', body[:10]); assert depth == 8
    elif kind == b'IDAT': idat += body
bpp = {2: 3, 6: 4}[ctype]
raw = zlib.decompress(idat); stride = w * bpp
prev = bytearray(stride); rows = []
for y in range(h):
    f = raw[y*(stride+1)]; line = bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])
    for i in range(stride):
        a = line[i-bpp] if i >= bpp else 0; b = prev[i]; c = prev[i-bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
targets = [tuple(int(c[i:i+2], 16) for i in (1, 3, 5)) for c in sys.argv[2:]]
counts = [0] * len(targets)
for line in rows:
    for x in range(0, stride, bpp):
        px = line[x:x+3]
        for k, t in enumerate(targets):
            if abs(px[0]-t[0]) + abs(px[1]-t[1]) + abs(px[2]-t[2]) <= 24: counts[k] += 1
print(' '.join(map(str, counts)))
"#;
    let out = Command::new("python3")
        .args(["-c", DECODE])
        .arg(png)
        .args(colours)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "PNG decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}
