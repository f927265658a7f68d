//! Headless Chromium, Debian's `chromium` package (installed by `scripts/setup-test-tools.sh`),
//! rendering a local page as a reader's browser would: a screenshot to look at, and the text the
//! rendered page holds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser: `$CHROMIUM` or `/usr/bin/chromium`. Panics, saying how to get it, when absent.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium package (bash scripts/setup-test-tools.sh does)",
        path.display()
    );
    path
}

/// Chromium with the flags a closed, headless machine needs: no sandbox (tests run as root), no
/// GPU, no background network, a fresh profile.
fn headless(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

fn file_url(page: &Path) -> String {
    format!("file://{}", page.canonicalize().expect("the page exists").display())
}

/// Renders `page` at `width` x `height` CSS pixels into a PNG at `out`.
pub fn screenshot(page: &Path, out: &Path, width: u32, height: u32) {
    let profile = tempfile::tempdir().unwrap();
    let status = headless(profile.path())
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", out.display()))
        .arg(file_url(page))
        .output()
        .expect("chromium starts");
    assert!(
        status.status.success() && out.exists(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// The rendered page's text: Chromium's DOM after layout, tags removed, whitespace collapsed.
pub fn rendered_text(page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(profile.path())
        .arg("--dump-dom")
        .arg(file_url(page))
        .output()
        .expect("chromium starts");
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a screenshot shows, in numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    /// Share of pixels that are not (near) white.
    pub inked: f64,
    /// Pixels of exactly this RGB colour.
    pub of_colour: usize,
}

/// Decodes a screenshot and counts its inked pixels and those of `colour`.
pub fn pixels(png_file: &Path, colour: [u8; 3]) -> Pixels {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3 && info.bit_depth == png::BitDepth::Eight, "{info:?}");
    let (mut inked, mut of_colour, mut total) = (0usize, 0usize, 0usize);
    for pixel in buf[..info.buffer_size()].chunks_exact(channels) {
        total += 1;
        if pixel[..3].iter().any(|&c| c < 235) {
            inked += 1;
        }
        if pixel[..3] == colour {
            of_colour += 1;
        }
    }
    Pixels {
        width: info.width,
        height: info.height,
        inked: inked as f64 / total.max(1) as f64,
        of_colour,
    }
}
