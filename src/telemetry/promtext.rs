//! Prometheus text exposition format (version 0.0.4): a parser and a scrape
//! of a URL (blocking and async). Used by the NPU backend to read a vendor
//! exporter and by the ledger to count inference tokens.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Largest exposition body accepted from a scrape; a runaway exporter must not
/// exhaust the agent's memory.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order they appeared.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when every `(key, value)` pair is among this sample's labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// `# TYPE` of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// A parsed exposition: every sample, plus the declared types and help texts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, MetricType>,
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    /// Samples of one metric name.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Value of the first sample of `name` carrying all `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| s.has_labels(labels))
            .map(|s| s.value)
    }

    /// Sum over every sample of `name` carrying all `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|s| s.has_labels(labels))
            .map(|s| s.value)
            .sum()
    }
}

/// A malformed exposition: the 1-based line and column, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Parses a text exposition. Comments other than `# HELP` / `# TYPE` and blank
/// lines are skipped; any malformed sample line is an error naming its line.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            parse_comment(comment, &mut out);
            continue;
        }
        let offset = line.len() - trimmed.len();
        let sample = LineParser::new(trimmed, line_no, offset).sample()?;
        out.samples.push(sample);
    }
    Ok(out)
}

fn parse_comment(comment: &str, out: &mut Exposition) {
    let mut words = comment.trim_start().splitn(3, [' ', '\t']);
    match (words.next(), words.next(), words.next()) {
        (Some("TYPE"), Some(name), Some(kind)) => {
            let kind = match kind.trim() {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                _ => MetricType::Untyped,
            };
            out.types.insert(name.to_string(), kind);
        }
        (Some("HELP"), Some(name), help) => {
            out.help
                .insert(name.to_string(), unescape_help(help.unwrap_or("")));
        }
        _ => {}
    }
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct LineParser<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
    offset: usize,
}

impl<'a> LineParser<'a> {
    fn new(s: &'a str, line: usize, offset: usize) -> Self {
        LineParser {
            s,
            pos: 0,
            line,
            offset,
        }
    }

    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            column: self.offset + self.pos + 1,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn name(&mut self, what: &str, colon_ok: bool) -> Result<&'a str, ParseError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == b'_'
                || (colon_ok && c == b':')
                || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err(format!("expected a {what}")));
        }
        Ok(&self.s[start..self.pos])
    }

    fn label_value(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected '\"' to open a label value"));
        }
        self.pos += 1;
        let mut out = String::new();
        let rest = &self.s[self.pos..];
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        self.pos = self.s.len();
        Err(self.err("unterminated label value: add the closing '\"'"))
    }

    fn labels(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        let mut labels = Vec::new();
        // Caller consumed '{'.
        loop {
            self.skip_spaces();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(labels);
            }
            let key = self.name("label name", false)?.to_string();
            self.skip_spaces();
            if self.peek() != Some(b'=') {
                return Err(self.err(format!("expected '=' after label name '{key}'")));
            }
            self.pos += 1;
            self.skip_spaces();
            let value = self.label_value()?;
            labels.push((key, value));
            self.skip_spaces();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected ',' or '}' after a label")),
            }
        }
    }

    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'\t' {
                break;
            }
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn sample(mut self) -> Result<Sample, ParseError> {
        let name = self.name("metric name", true)?.to_string();
        let labels = if self.peek() == Some(b'{') {
            self.pos += 1;
            self.labels()?
        } else {
            Vec::new()
        };
        if !matches!(self.peek(), Some(b' ' | b'\t')) {
            return Err(self.err(format!("expected a space and a value after '{name}'")));
        }
        self.skip_spaces();
        let value_at = self.pos;
        let value_text = self.token();
        let value = parse_value(value_text).ok_or_else(|| {
            self.pos = value_at;
            self.err(format!("'{value_text}' is not a number"))
        })?;
        self.skip_spaces();
        let timestamp_ms = if self.pos < self.s.len() {
            let ts_at = self.pos;
            let ts_text = self.token();
            let ts = ts_text.parse::<i64>().map_err(|_| {
                self.pos = ts_at;
                self.err(format!("'{ts_text}' is not a timestamp in milliseconds"))
            })?;
            self.skip_spaces();
            if self.pos < self.s.len() {
                return Err(self.err("unexpected text after the timestamp"));
            }
            Some(ts)
        } else {
            None
        };
        Ok(Sample {
            name,
            labels,
            value,
            timestamp_ms,
        })
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// A scrape that failed: the URL and why.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("scrape {url}: {message}")]
    Http { url: String, message: String },
    #[error("scrape {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("scrape {url}: body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
    #[error("scrape {url}: malformed exposition at {source}")]
    Parse { url: String, source: ParseError },
}

fn http_err(url: &str, e: impl fmt::Display) -> ScrapeError {
    ScrapeError::Http {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// Rejects an error status or an announced body over [`MAX_BODY_BYTES`].
fn check_response(url: &str, status: u16, content_length: Option<u64>) -> Result<(), ScrapeError> {
    if !(200..300).contains(&status) {
        return Err(ScrapeError::Status {
            url: url.to_string(),
            status,
        });
    }
    if content_length.unwrap_or(0) > MAX_BODY_BYTES as u64 {
        return Err(ScrapeError::TooLarge {
            url: url.to_string(),
        });
    }
    Ok(())
}

fn finish(url: &str, body: &[u8]) -> Result<Exposition, ScrapeError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ScrapeError::TooLarge {
            url: url.to_string(),
        });
    }
    let text = String::from_utf8_lossy(body);
    parse(&text).map_err(|source| ScrapeError::Parse {
        url: url.to_string(),
        source,
    })
}

/// Blocking scrape. Do not call from inside an async task (use [`scrape`]).
pub fn scrape_blocking(url: &str, timeout: Duration) -> Result<Exposition, ScrapeError> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| http_err(url, e))?;
    scrape_blocking_with(&client, url)
}

/// Blocking scrape with a client the caller keeps (connection reuse).
pub fn scrape_blocking_with(
    client: &reqwest::blocking::Client,
    url: &str,
) -> Result<Exposition, ScrapeError> {
    let resp = client
        .get(url)
        .header("Accept", "text/plain;version=0.0.4")
        .send()
        .map_err(|e| http_err(url, e))?;
    check_response(url, resp.status().as_u16(), resp.content_length())?;
    // Read at most one byte past the cap: a body that never ends (chunked,
    // no length) stops here instead of filling memory.
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(resp, MAX_BODY_BYTES as u64 + 1),
        &mut body,
    )
    .map_err(|e| http_err(url, e))?;
    finish(url, &body)
}

/// Async scrape with a caller-owned client (set its timeout when building it).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Exposition, ScrapeError> {
    let resp = client
        .get(url)
        .header("Accept", "text/plain;version=0.0.4")
        .send()
        .await
        .map_err(|e| http_err(url, e))?;
    check_response(url, resp.status().as_u16(), resp.content_length())?;
    let body = read_capped(url, resp).await?;
    finish(url, &body)
}

/// The body, chunk by chunk, stopping as soon as it passes [`MAX_BODY_BYTES`]
/// (a chunked body announces no length to refuse up front).
async fn read_capped(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, ScrapeError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_err(url, e))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(ScrapeError::TooLarge {
                url: url.to_string(),
            });
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="qwen2-7b",engine="0"} 12345.0
vllm:generation_tokens_total{model_name="qwen2-7b"} 678 1700000000000
# a free comment
http_requests{path="/a\"b\\c\nd",code="200",} +Inf
temp NaN
"#;

    #[test]
    fn parses_names_labels_values_timestamps_and_types() {
        let e = parse(VLLM).unwrap();
        assert_eq!(e.samples.len(), 4);
        assert_eq!(
            e.types.get("vllm:prompt_tokens_total"),
            Some(&MetricType::Counter)
        );
        assert_eq!(
            e.help["vllm:prompt_tokens_total"],
            "Number of prefill tokens processed."
        );
        assert_eq!(
            e.value("vllm:prompt_tokens_total", &[("model_name", "qwen2-7b")]),
            Some(12345.0)
        );
        let gen = e.series("vllm:generation_tokens_total").next().unwrap();
        assert_eq!(gen.value, 678.0);
        assert_eq!(gen.timestamp_ms, Some(1_700_000_000_000));
        let http = &e.samples[2];
        assert_eq!(http.label("path"), Some("/a\"b\\c\nd"));
        assert_eq!(http.label("code"), Some("200"));
        assert!(http.value.is_infinite());
        assert!(e.samples[3].value.is_nan());
    }

    #[test]
    fn sum_adds_matching_series_only() {
        let e = parse("t{m=\"a\",k=\"p\"} 2\nt{m=\"a\",k=\"c\"} 3\nt{m=\"b\"} 100\n").unwrap();
        assert_eq!(e.sum("t", &[("m", "a")]), 5.0);
        assert_eq!(e.sum("t", &[]), 105.0);
        assert_eq!(e.sum("missing", &[]), 0.0);
    }

    #[test]
    fn malformed_lines_name_line_and_column() {
        let err = parse("ok 1\nbad{x=\"1\" 2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.column, 11);
        assert!(err.message.contains("','"), "{err}");

        let err = parse("a 1\nb twelve\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3));
        assert!(err.message.contains("twelve"));

        let err = parse("c{x=\"open} 1\n").unwrap_err();
        assert!(err.message.contains("unterminated"), "{err}");

        let err = parse("d 1 notatime\n").unwrap_err();
        assert!(err.message.contains("timestamp"));

        let err = parse("9bad 1\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 1));
    }

    #[test]
    fn scrape_reads_a_real_http_endpoint() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).unwrap();
            let body = "x_total{a=\"1\"} 42\n";
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            )
            .unwrap();
        });
        let e = scrape_blocking(&format!("http://{addr}/metrics"), Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert_eq!(e.value("x_total", &[("a", "1")]), Some(42.0));
    }

    /// A server sending an endless chunked body; returns its URL and the
    /// bytes it managed to send before the client hung up.
    fn endless_body() -> (String, std::thread::JoinHandle<u64>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).unwrap();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .unwrap();
            let line = "x_total{a=\"1\"} 42\n".repeat(4096);
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            let mut sent = 0u64;
            // At most 1 GiB: a client that never stops fails the test, not the machine.
            while sent < 1 << 30 {
                if conn.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                sent += line.len() as u64;
            }
            sent
        });
        (format!("http://{addr}/metrics"), server)
    }

    #[test]
    fn an_endless_chunked_body_is_cut_at_the_cap_blocking() {
        let (url, server) = endless_body();
        let err = scrape_blocking(&url, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err}");
        let sent = server.join().unwrap();
        assert!(sent < 2 * MAX_BODY_BYTES as u64, "read {sent} bytes");
    }

    #[test]
    fn an_endless_chunked_body_is_cut_at_the_cap_async() {
        let (url, server) = endless_body();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let err = rt.block_on(scrape(&client, &url)).unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err}");
        drop(client);
        drop(rt);
        let sent = server.join().unwrap();
        assert!(sent < 2 * MAX_BODY_BYTES as u64, "read {sent} bytes");
    }

    #[test]
    fn scrape_of_a_closed_port_is_an_error_naming_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/metrics");
        let err = scrape_blocking(&url, Duration::from_secs(2)).unwrap_err();
        assert!(err.to_string().contains(&url), "{err}");
    }
}
