//! The deployment files under deploy/ against the real binary: every file
//! parses; the Dockerfile, compose file and Kubernetes manifests use the
//! commands, flags, ports and paths the binary and its configs really have;
//! the configs pass `switchyard check`; promtool accepts the Prometheus
//! config, the alert rules (and their unit tests) and a real /metrics page;
//! and the dashboard and the alerts query only metrics and labels that a
//! running gateway exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use support::{Client, Gateway, TempDir, chat, digest};

/// Labels Prometheus adds when it scrapes (and the Kubernetes job relabels).
const SCRAPE_LABELS: &[&str] = &["instance", "job", "namespace", "pod"];

const CONTAINER_CONFIG: &str = "deploy/config/switchyard.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const COMPOSE: &str = "deploy/compose.yaml";
const KUBERNETES: &str = "deploy/kubernetes";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/dashboard.json";

// === files ===

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e))
}

/// Every document of a YAML text, as JSON values; empty documents are skipped.
fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn yaml(path: impl AsRef<Path>) -> Value {
    let path = path.as_ref();
    let mut docs =
        yaml_documents(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: a string expected, found {v}"))
}

// === the binary ===

fn switchyard(args: &[&str], env: &BTreeMap<String, String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap()
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `switchyard check` on a config text with exactly `env`.
fn check_config(text: &str, env: &BTreeMap<String, String>, what: &str) {
    let dir = TempDir::new();
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, text).unwrap();
    let out = switchyard(&["check", "--config", path.to_str().unwrap()], env);
    assert!(
        out.status.success() && stdout(&out).contains(": ok ("),
        "{what} does not pass `switchyard check`:\n{}",
        both(&out)
    );
}

/// The names of `${VAR}` references in a config text (commented ones too),
/// with whether they carry a `:-default`.
fn env_references(text: &str) -> BTreeMap<String, bool> {
    let mut refs = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let end = rest.find('}').expect("a closed ${...}");
        let inner = &rest[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, _)) => (name, true),
            None => (inner, false),
        };
        let entry = refs.entry(name.to_owned()).or_insert(default);
        *entry &= default;
        rest = &rest[end..];
    }
    refs
}

/// The subcommands `switchyard --help` lists.
fn subcommands() -> BTreeSet<String> {
    let out = switchyard(&["--help"], &no_env());
    assert!(out.status.success(), "{}", both(&out));
    stdout(&out)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Asserts that the binary accepts `argv` (its arguments, without the
/// program): a known subcommand, and flags clap parses. `--help` at the end
/// makes clap stop after parsing instead of running the command.
fn assert_binary_accepts(argv: &[String], what: &str) {
    let commands = subcommands();
    let first = argv
        .first()
        .unwrap_or_else(|| panic!("{what}: no arguments"));
    assert!(
        commands.contains(first),
        "{what}: {first:?} is not a switchyard command ({commands:?})"
    );
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    args.push("--help");
    let out = switchyard(&args, &no_env());
    assert!(
        out.status.success(),
        "{what}: switchyard rejects {argv:?}:\n{}",
        both(&out)
    );
}

/// The value of `--config`/`-c` in an argument list.
fn config_flag(argv: &[String]) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == "--config" || a == "-c" {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    })
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: a list expected, found {v}"))
        .iter()
        .map(|s| str_of(s, what).to_owned())
        .collect()
}

// === the container config and the ConfigMap's ===

fn port_of(address: &str, what: &str) -> u16 {
    address
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{what}: {address:?}: {e}"))
        .port()
}

struct Listen {
    public: u16,
    admin: u16,
}

/// The ports of a config, which must bind every interface: a container's
/// loopback is not reachable from the Service, the probes or Prometheus.
fn listen_of(config: &Value, what: &str) -> Listen {
    let mut ports = Vec::new();
    for field in ["listen", "admin_listen"] {
        let address = str_of(&config[field], &format!("{what}: {field}"));
        assert!(
            address.starts_with("0.0.0.0:") || address.starts_with("[::]:"),
            "{what}: {field} must bind every interface in a container, not {address}"
        );
        ports.push(port_of(address, what));
    }
    Listen {
        public: ports[0],
        admin: ports[1],
    }
}

fn shutdown_grace(config: &Value) -> Duration {
    config["shutdown_grace"]
        .as_str()
        .map(|d| humantime::parse_duration(d).unwrap())
        .unwrap_or(Duration::from_secs(30)) // the schema's default
}

/// The Redis URL of `rate_limits.store`, active or still commented out.
fn redis_store(text: &str) -> Option<(String, u16)> {
    let line = text
        .lines()
        .find(|l| l.contains("rate_limits:") && l.contains("redis://"))?;
    let url = &line[line.find("redis://")? + "redis://".len()..];
    let authority = url.split(['/', '"', ' ', '}']).next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

// === Kubernetes ===

struct Kubernetes {
    objects: Vec<Value>,
}

impl Kubernetes {
    /// Every object of every resource the kustomization lists.
    fn load() -> Kubernetes {
        let kustomization = yaml(format!("{KUBERNETES}/kustomization.yaml"));
        let mut objects = Vec::new();
        for file in strings(&kustomization["resources"], "kustomization resources") {
            let path = format!("{KUBERNETES}/{file}");
            objects.extend(yaml_documents(&read(&path)).unwrap());
        }
        Kubernetes { objects }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {KUBERNETES}"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn gateway(&self) -> &Value {
        self.get("Deployment", "switchyard")
    }

    fn container(&self) -> &Value {
        let containers = self.gateway()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        containers
            .iter()
            .find(|c| c["name"] == "switchyard")
            .expect("a container named switchyard")
    }

    fn config_map(&self) -> &Value {
        let volumes = self.gateway()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let name = volumes
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .expect("a ConfigMap volume");
        self.get("ConfigMap", name)
    }

    /// The text and parsed value of the config the pods run.
    fn config(&self) -> (String, Value) {
        let text = str_of(
            &self.config_map()["data"]["switchyard.yaml"],
            "ConfigMap data switchyard.yaml",
        )
        .to_owned();
        let value = yaml_documents(&text).unwrap().remove(0);
        (text, value)
    }

    /// The environment the gateway container gets: literal `env` values and
    /// every key of the Secrets it takes with `envFrom`.
    fn pod_env(&self) -> BTreeMap<String, String> {
        let container = self.container();
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let name = str_of(&from["secretRef"]["name"], "envFrom secretRef");
            let secret = self.get("Secret", name);
            for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
                env.insert(k.clone(), str_of(v, k).to_owned());
            }
            for (k, v) in secret["data"].as_object().into_iter().flatten() {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(str_of(v, k))
                    .unwrap();
                env.insert(k.clone(), String::from_utf8(bytes).unwrap());
            }
        }
        for e in container["env"].as_array().into_iter().flatten() {
            if let Some(v) = e["value"].as_str() {
                env.insert(str_of(&e["name"], "env name").to_owned(), v.to_owned());
            }
        }
        env
    }

    /// A container port by name or number, as Services and probes name it.
    fn container_port(container: &Value, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return n as u16;
        }
        let name = str_of(port, "port");
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")) as u16
    }

    /// The pod whose labels `selector` (a label map) selects.
    fn selected_pod(&self, selector: &Value) -> &Value {
        let selector = selector.as_object().expect("a label selector");
        assert!(!selector.is_empty());
        let mut matching = self.all("Deployment").into_iter().filter(|d| {
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            selector.iter().all(|(k, v)| &labels[k] == v)
        });
        let found = matching
            .next()
            .unwrap_or_else(|| panic!("no Deployment's pods match the selector {selector:?}"));
        assert!(
            matching.next().is_none(),
            "{selector:?} selects two Deployments"
        );
        found
    }
}

// === compose ===

fn compose() -> Value {
    yaml(COMPOSE)
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_object(), "{COMPOSE}: no service {name}");
    service
}

/// Compose's `${VAR:-default}` / `${VAR}` with nothing set in the shell.
fn compose_interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

// === the Dockerfile ===

struct Dockerfile {
    /// (instruction, arguments), continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in read(DOCKERFILE).lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    current.push_str(head);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                    instructions.push((op.to_uppercase(), args.trim().to_owned()));
                    current.clear();
                }
            }
        }
        Dockerfile { instructions }
    }

    fn all(&self, op: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    fn last(&self, op: &str) -> &str {
        self.all(op)
            .pop()
            .unwrap_or_else(|| panic!("{DOCKERFILE}: no {op}"))
    }

    /// An exec-form (JSON array) instruction.
    fn exec_form(&self, op: &str) -> Vec<String> {
        serde_json::from_str(self.last(op))
            .unwrap_or_else(|e| panic!("{DOCKERFILE}: {op} must be a JSON array: {e}"))
    }

    /// `KEY=value` pairs of ENV or LABEL instructions.
    fn pairs(&self, op: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for args in self.all(op) {
            let mut rest = args.trim();
            while let Some((key, tail)) = rest.split_once('=') {
                let (value, tail) = match tail.strip_prefix('"') {
                    Some(quoted) => {
                        let end = quoted.find('"').unwrap();
                        (&quoted[..end], &quoted[end + 1..])
                    }
                    None => tail.split_once(' ').unwrap_or((tail, "")),
                };
                out.insert(key.trim().to_owned(), value.to_owned());
                rest = tail.trim();
            }
        }
        out
    }

    /// The sources and destination of the COPYs from the build context.
    fn context_copies(&self) -> Vec<(Vec<String>, String)> {
        self.all("COPY")
            .into_iter()
            .filter(|a| !a.contains("--from="))
            .map(|a| {
                let mut words: Vec<String> = a
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .map(str::to_owned)
                    .collect();
                let dest = words.pop().unwrap();
                (words, dest)
            })
            .collect()
    }

    /// The image `docker build -t` should produce: title:version labels.
    fn image(&self) -> String {
        let labels = self.pairs("LABEL");
        format!(
            "{}:{}",
            labels["org.opencontainers.image.title"], labels["org.opencontainers.image.version"]
        )
    }
}

/// `.dockerignore` as Docker reads it: the last pattern matching a path or
/// one of its parents decides; `!` lets it back in.
struct DockerIgnore(Vec<(bool, Vec<String>)>);

impl DockerIgnore {
    fn load() -> DockerIgnore {
        DockerIgnore(
            read(".dockerignore")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (keep, pattern) = match l.strip_prefix('!') {
                        Some(p) => (true, p),
                        None => (false, l),
                    };
                    let segments = pattern
                        .trim_matches('/')
                        .split('/')
                        .map(str::to_owned)
                        .collect();
                    (keep, segments)
                })
                .collect(),
        )
    }

    fn ignores(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut ignored = false;
        for (keep, pattern) in &self.0 {
            let matches = (1..=parts.len()).any(|n| {
                n == pattern.len()
                    && parts[..n]
                        .iter()
                        .zip(pattern)
                        .all(|(part, pat)| wildcard(pat, part))
            });
            if matches {
                ignored = !keep;
            }
        }
        ignored
    }
}

/// `*` and `?` within one path segment.
fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// `a/b/../c` → `a/c`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// === promtool ===

/// Whether promtool can run. Missing: a failure in CI (`.ci/run` installs
/// it), a loud skip elsewhere.
fn promtool_available(part: &str) -> bool {
    use std::io::Write;
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "promtool is missing and CI=true: .ci/run installs it (Debian's prometheus package)"
        );
    }
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n\
         ************************************************************************\n\
         * promtool NOT FOUND: SKIPPING {part}.\n\
         * Install it (apt-get install prometheus) to run this check; CI does.\n\
         ************************************************************************\n"
    );
    false
}

fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn assert_promtool(args: &[&str], stdin: Option<&str>) -> String {
    let out = promtool(args, stdin);
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}",
        both(&out)
    );
    both(&out)
}

// === PromQL, just enough to find metric names and label names ===

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str,
    Punct(char),
}

fn tokenize(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            tokens.push(Token::Str);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (5m, 0.95): not names.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            if !c.is_whitespace() {
                tokens.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    tokens
}

/// What one expression uses.
#[derive(Debug, Default)]
struct Uses {
    /// Metric name → label names in its selectors.
    selectors: BTreeMap<String, BTreeSet<String>>,
    /// Label names in by / without / on / ignoring / group_left / group_right.
    grouping: BTreeSet<String>,
}

fn uses(expr: &str) -> Uses {
    let tokens = tokenize(expr);
    let mut uses = Uses::default();
    let mut i = 0;
    while i < tokens.len() {
        if let Token::Ident(name) = &tokens[i] {
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&name.as_str()) && tokens.get(i + 1) == Some(&Token::Punct('(')) {
                i += 2;
                while i < tokens.len() && tokens[i] != Token::Punct(')') {
                    if let Token::Ident(label) = &tokens[i] {
                        uses.grouping.insert(label.clone());
                    }
                    i += 1;
                }
            } else if name.starts_with("switchyard_") {
                let labels = uses.selectors.entry(name.clone()).or_default();
                if tokens.get(i + 1) == Some(&Token::Punct('{')) {
                    i += 2;
                    while i < tokens.len() && tokens[i] != Token::Punct('}') {
                        // A label name is the identifier before =, !=, =~ or !~.
                        if let (Token::Ident(label), Some(Token::Punct('=' | '!'))) =
                            (&tokens[i], tokens.get(i + 1))
                        {
                            labels.insert(label.clone());
                        }
                        i += 1;
                    }
                }
            }
        }
        i += 1;
    }
    uses
}

/// Sample name → label names, from a Prometheus text exposition.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let inner = &line[end + 1..line.rfind('}').unwrap()];
            for pair in inner.split("\",") {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    out
}

/// Checks one expression against what the gateway exports.
fn check_expression(
    expr: &str,
    exported: &BTreeMap<String, BTreeSet<String>>,
    where_: &str,
    problems: &mut Vec<String>,
) {
    let uses = uses(expr);
    let mut known: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
    for (metric, labels) in &uses.selectors {
        let Some(has) = exported.get(metric) else {
            problems.push(format!(
                "{where_}: {metric} is not in the gateway's /metrics"
            ));
            continue;
        };
        known.extend(has.iter().cloned());
        for label in labels {
            if !has.contains(label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                problems.push(format!("{where_}: {metric} has no label {label}"));
            }
        }
    }
    for label in &uses.grouping {
        if !known.contains(label) {
            problems.push(format!(
                "{where_}: groups by {label}, which none of its metrics has"
            ));
        }
    }
}

/// Every PromQL expression of the dashboard: panel targets and the
/// label_values() queries of its variables.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let query = var["query"]
                .as_str()
                .or(var["query"]["query"].as_str())
                .unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {}: label_values(...) expected", var["name"]));
            let (metric, label) = inner.split_once(',').unwrap();
            // As a selector, so the label is checked against the metric.
            out.push((
                format!("variable {}", var["name"]),
                format!("{}{{{}=~\".*\"}}", metric.trim(), label.trim()),
            ));
        }
    }
    out
}

fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// Grafana's variables replaced by values PromQL can parse.
fn without_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start + 1..];
        let (name, len) = match tail.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').unwrap();
                (&inner[..end], end + 2)
            }
            None => {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                (&tail[..end], end)
            }
        };
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn alert_rules() -> Vec<Value> {
    let alerts = yaml(ALERTS);
    alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

// === tests ===

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let files = files_under("deploy");
    let mut yaml_files = 0;
    let mut json_files = 0;
    for path in &files {
        if has_extension(path, &["yaml", "yml"]) {
            let docs = yaml_documents(&read(path))
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            assert!(!docs.is_empty(), "{}: no document", path.display());
            yaml_files += 1;
        } else if has_extension(path, &["json"]) {
            serde_json::from_str::<Value>(&read(path))
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            json_files += 1;
        }
    }
    // compose, the container config, 9 Kubernetes manifests, 3 Prometheus
    // files, 2 Grafana provisioning files; the dashboard.
    assert!(
        yaml_files >= 16,
        "only {yaml_files} YAML files under deploy/"
    );
    assert!(json_files >= 1, "no JSON under deploy/");
    let k8s = Kubernetes::load();
    assert!(k8s.objects.len() >= 11, "{} objects", k8s.objects.len());
    for o in &k8s.objects {
        assert!(
            o["apiVersion"].is_string()
                && o["kind"].is_string()
                && o["metadata"]["name"].is_string(),
            "every manifest has apiVersion, kind and metadata.name: {o}"
        );
    }
}

#[test]
fn the_container_config_passes_check() {
    let text = read(CONTAINER_CONFIG);
    // Dummy values for every ${VAR}, in case a provider is uncommented.
    let env: BTreeMap<String, String> = env_references(&text)
        .into_keys()
        .map(|k| (k, "dummy".to_owned()))
        .collect();
    check_config(&text, &env, CONTAINER_CONFIG);
    listen_of(&yaml(CONTAINER_CONFIG), CONTAINER_CONFIG);
}

#[test]
fn the_configmap_config_passes_check_with_the_pods_environment() {
    let k8s = Kubernetes::load();
    let (text, config) = k8s.config();
    let env = k8s.pod_env();
    check_config(&text, &env, "the ConfigMap's switchyard.yaml");
    listen_of(&config, "the ConfigMap's switchyard.yaml");
    // Every key the config mentions, in the commented providers too, is in
    // the pod's environment: uncommenting a provider is enough.
    for (var, has_default) in env_references(&text) {
        assert!(
            has_default || env.contains_key(&var),
            "the ConfigMap's config uses ${{{var}}}, which the Deployment's environment (its Secret) lacks"
        );
    }
}

#[test]
fn compose_gives_the_container_config_its_environment() {
    let text = read(CONTAINER_CONFIG);
    let compose = compose();
    let service = compose_service(&compose, "switchyard");
    let env: BTreeMap<String, String> = service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), compose_interpolate(str_of(v, k))))
        .collect();
    for (var, has_default) in env_references(&text) {
        assert!(
            has_default || env.contains_key(&var),
            "{CONTAINER_CONFIG} uses ${{{var}}}, which compose does not pass to the container"
        );
    }
    check_config(
        &text,
        &env,
        "the container config with compose's environment",
    );
}

#[test]
fn commands_and_flags_are_ones_the_binary_accepts() {
    // The check can fail: an unknown flag is refused even before --help.
    let out = switchyard(&["serve", "--no-such-flag", "--help"], &no_env());
    assert!(!out.status.success());

    let help = stdout(&switchyard(&["serve", "--help"], &no_env()));
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("SWITCHYARD_CONFIG"), "{help}");

    let docker = Dockerfile::load();
    let entrypoint = docker.exec_form("ENTRYPOINT");
    let cmd = docker.exec_form("CMD");
    assert_eq!(entrypoint.len(), 1, "ENTRYPOINT is the binary alone");
    assert_binary_accepts(&cmd, "Dockerfile CMD");
    assert_eq!(cmd[0], "serve", "the image serves by default");

    let compose = compose();
    let command = strings(
        &compose_service(&compose, "switchyard")["command"],
        "compose command",
    );
    assert_binary_accepts(&command, "compose command");
    assert_eq!(command[0], "serve");

    let k8s = Kubernetes::load();
    let container = k8s.container();
    assert!(
        container["command"].is_null(),
        "the Deployment keeps the image's ENTRYPOINT and sets args"
    );
    let args = strings(&container["args"], "Deployment args");
    assert_binary_accepts(&args, "Deployment args");
    assert_eq!(args[0], "serve");
}

#[test]
fn the_config_path_is_a_mounted_directory_everywhere() {
    let docker = Dockerfile::load();
    let env = docker.pairs("ENV");
    let image_path = env
        .get("SWITCHYARD_CONFIG")
        .expect("the Dockerfile sets SWITCHYARD_CONFIG");
    // The image carries the container config at that path.
    assert!(
        docker
            .context_copies()
            .iter()
            .any(|(from, to)| from == &[CONTAINER_CONFIG.to_owned()] && to == image_path),
        "{DOCKERFILE} copies {CONTAINER_CONFIG} to {image_path}"
    );
    let image_path = Path::new(image_path);

    // compose: --config names a file in a directory bind-mounted from deploy/.
    let compose = compose();
    let service = compose_service(&compose, "switchyard");
    let path = config_flag(&strings(&service["command"], "compose command"))
        .expect("compose passes --config");
    let path = Path::new(&path);
    assert_eq!(path, image_path, "compose and the image read the same path");
    let mount = strings(&service["volumes"], "compose volumes")
        .into_iter()
        .find(|v| v.split(':').nth(1) == path.parent().unwrap().to_str())
        .unwrap_or_else(|| {
            panic!(
                "compose mounts nothing at {}",
                path.parent().unwrap().display()
            )
        });
    let source = Path::new("deploy").join(mount.split(':').next().unwrap());
    assert!(
        source.is_dir(),
        "compose mounts {} as a directory",
        source.display()
    );
    assert_eq!(
        normalize(&source.join(path.file_name().unwrap())),
        Path::new(CONTAINER_CONFIG),
        "the mounted directory holds the container config under the name the gateway reads"
    );
    assert!(mount.ends_with(":ro"), "mounted read-only: {mount}");

    // Kubernetes: --config names a file in a ConfigMap mounted as a
    // directory; a subPath mount would never see an update.
    let k8s = Kubernetes::load();
    let path = config_flag(&strings(&k8s.container()["args"], "Deployment args"))
        .expect("the Deployment passes --config");
    let path = Path::new(&path);
    assert_eq!(
        path, image_path,
        "the Deployment and the image read the same path"
    );
    let mount = k8s.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == path.parent().unwrap().to_str())
        .expect("a volume mounted at the config's directory");
    assert!(mount["subPath"].is_null(), "no subPath: {mount}");
    assert_eq!(mount["readOnly"], true);
    let volume = k8s.gateway()["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        volume["configMap"]["items"].is_null(),
        "the whole ConfigMap is mounted"
    );
    let config_map = k8s.get(
        "ConfigMap",
        str_of(&volume["configMap"]["name"], "configMap"),
    );
    assert!(
        config_map["data"][path.file_name().unwrap().to_str().unwrap()].is_string(),
        "the ConfigMap has a key named like the config file"
    );
}

#[test]
fn ports_agree_with_the_configs_everywhere() {
    let container = listen_of(&yaml(CONTAINER_CONFIG), CONTAINER_CONFIG);
    let want: BTreeSet<u16> = [container.public, container.admin].into();

    // Dockerfile EXPOSE.
    let exposed: BTreeSet<u16> = Dockerfile::load()
        .last("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert_eq!(exposed, want, "{DOCKERFILE} EXPOSE");

    // compose: the container side of every published port.
    let compose = compose();
    let published: BTreeSet<u16> = strings(
        &compose_service(&compose, "switchyard")["ports"],
        "compose ports",
    )
    .iter()
    .map(|p| p.rsplit(':').next().unwrap().parse().unwrap())
    .collect();
    assert_eq!(published, want, "{COMPOSE} ports");

    // Prometheus (compose) scrapes the admin port of the switchyard service.
    let prometheus = yaml(PROMETHEUS);
    let job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "switchyard")
        .expect("a switchyard scrape job");
    assert_eq!(job["metrics_path"], "/metrics");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["port"].as_u64(), Some(container.admin as u64));
    for name in strings(&sd["names"], "dns_sd names") {
        compose_service(&compose, &name);
    }

    // Kubernetes: container ports, Services, probes, scrape annotation.
    let k8s = Kubernetes::load();
    let (_, config) = k8s.config();
    let listen = listen_of(&config, "the ConfigMap's switchyard.yaml");
    let c = k8s.container();
    let port = |p: &str| Kubernetes::container_port(c, &Value::from(p));
    assert_eq!(port("http"), listen.public, "containerPort http = listen");
    assert_eq!(
        port("admin"),
        listen.admin,
        "containerPort admin = admin_listen"
    );
    let declared: BTreeSet<u16> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(declared, [listen.public, listen.admin].into());

    for (service, want) in [
        ("switchyard", listen.public),
        ("switchyard-admin", listen.admin),
    ] {
        let service = k8s.get("Service", service);
        let pod = k8s.selected_pod(&service["spec"]["selector"]);
        assert_eq!(pod["metadata"]["name"], "switchyard");
        let ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "one port per Service: {service}");
        assert_eq!(
            Kubernetes::container_port(c, &ports[0]["targetPort"]),
            want,
            "Service {} reaches the wrong port",
            service["metadata"]["name"]
        );
    }

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            Kubernetes::container_port(c, &get["port"]),
            listen.admin,
            "{probe} asks the admin port"
        );
    }

    let annotations = &k8s.gateway()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        listen.admin.to_string(),
        "the scrape annotation names the admin port"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn the_shared_redis_is_where_the_configs_say() {
    // compose: the store URL names the redis service.
    let compose = compose();
    let (host, port) = redis_store(&read(CONTAINER_CONFIG))
        .expect("the container config shows where rate_limits.store goes");
    compose_service(&compose, &host);
    assert_eq!(port, 6379, "Redis's port in compose is the image's default");

    // Kubernetes: it names the Redis Service and its port, whose pods run Redis.
    let k8s = Kubernetes::load();
    let (text, _) = k8s.config();
    let (host, port) =
        redis_store(&text).expect("the ConfigMap shows where rate_limits.store goes");
    let service = k8s.get("Service", &host);
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"].as_u64(), Some(port as u64));
    let redis = k8s.selected_pod(&service["spec"]["selector"]);
    let container = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(str_of(&container["image"], "redis image").starts_with("redis:"));
    assert_eq!(
        Kubernetes::container_port(container, &service_port["targetPort"]),
        6379
    );
    // Only the gateway may reach it.
    let policy = k8s.get("NetworkPolicy", &host);
    let from = &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(k8s.selected_pod(from)["metadata"]["name"], "switchyard");
}

#[test]
fn images_agree_and_the_dockerfile_builds_a_nonroot_distroless_image() {
    let docker = Dockerfile::load();
    let from = docker.all("FROM");
    assert_eq!(from.len(), 2, "a builder and a final stage: {from:?}");
    assert!(from[0].starts_with("rust:1-bookworm AS "), "{}", from[0]);
    let final_image = from[1];
    assert!(
        final_image.starts_with("gcr.io/distroless/cc-debian12")
            && final_image.ends_with(":nonroot"),
        "{final_image}"
    );
    let runs = |needle: &str| docker.all("RUN").iter().any(|r| r.contains(needle));
    assert!(
        runs("cargo build --release --locked"),
        "the builder builds --release --locked"
    );
    // By default it builds with profile-guided optimization: bench/pgo, a
    // --release --locked build too, and a script bash can read.
    assert!(runs("bench/pgo"), "the builder runs bench/pgo");
    let script = read("bench/pgo");
    assert!(script.contains("cargo build --release --locked"));
    // The binary the image takes is the one the script builds.
    assert!(script.contains("built target/pgo/release/switchyard"));
    assert!(
        runs("built=target/pgo/release/switchyard"),
        "the builder copies bench/pgo's binary"
    );
    let syntax = Command::new("bash")
        .args(["-n", "bench/pgo"])
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bench/pgo: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Its training asks for aliases the bench's config has.
    let bench: serde_yaml::Value = serde_yaml::from_str(&read("bench/switchyard.yaml")).unwrap();
    let trained: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("for model in "))
        .flat_map(|l| l.split(';').next().unwrap().split_whitespace())
        .collect();
    assert!(trained.len() >= 4, "{trained:?}");
    for model in trained {
        assert!(
            bench["models"].get(model).is_some(),
            "bench/pgo trains on {model}, which bench/switchyard.yaml lacks"
        );
    }
    let user = docker.last("USER");
    assert!(
        user.starts_with("nonroot") || user.starts_with("65532"),
        "USER {user}"
    );
    // The ENTRYPOINT is where the builder's binary was copied.
    let copied = docker
        .all("COPY")
        .into_iter()
        .find(|c| c.contains("--from="))
        .unwrap();
    assert_eq!(
        copied.split_whitespace().last(),
        Some(docker.exec_form("ENTRYPOINT")[0].as_str())
    );

    // One image name, and its tag is the crate's version.
    let image = docker.image();
    let manifest = read("Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(image, format!("switchyard:{version}"));
    let compose = compose();
    let service = compose_service(&compose, "switchyard");
    assert_eq!(service["image"], image.as_str(), "{COMPOSE}");
    assert_eq!(service["build"]["dockerfile"], "deploy/Dockerfile");
    assert_eq!(
        normalize(&Path::new("deploy").join(str_of(&service["build"]["context"], "context"))),
        PathBuf::new(),
        "compose builds from the repository root, as the Dockerfile expects"
    );
    let k8s = Kubernetes::load();
    assert_eq!(k8s.container()["image"], image.as_str(), "the Deployment");
}

#[test]
fn the_build_context_holds_what_the_build_needs() {
    let ignore = DockerIgnore::load();
    assert!(ignore.ignores("target/debug/switchyard"));
    assert!(ignore.ignores(".git/HEAD"));
    let docker = Dockerfile::load();
    let mut copied = Vec::new();
    for (sources, _) in docker.context_copies() {
        for source in sources {
            assert!(
                Path::new(&source).exists(),
                "{DOCKERFILE} copies {source}, which does not exist"
            );
            assert!(
                !ignore.ignores(&source),
                ".dockerignore leaves out {source}"
            );
            copied.push(PathBuf::from(source));
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            copied.contains(&PathBuf::from(needed)),
            "{needed} is not copied"
        );
    }
    assert!(!Path::new("build.rs").exists() || copied.contains(&PathBuf::from("build.rs")));
    // Files compiled into the binary are in the context too.
    let mut included = 0;
    for file in files_under("src") {
        let text = read(&file);
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let target = normalize(
                    &file
                        .parent()
                        .unwrap()
                        .join(&rest[..rest.find('"').unwrap()]),
                );
                assert!(
                    target.exists(),
                    "{} includes {}",
                    file.display(),
                    target.display()
                );
                assert!(
                    copied.iter().any(|c| target.starts_with(c)),
                    "{} includes {}, which the Dockerfile does not copy",
                    file.display(),
                    target.display()
                );
                assert!(!ignore.ignores(target.to_str().unwrap()));
                included += 1;
            }
        }
    }
    assert!(included >= 1, "config/schema.json is compiled in");
}

#[test]
fn shutdown_waits_for_the_configs_grace() {
    let k8s = Kubernetes::load();
    let (_, config) = k8s.config();
    let grace = shutdown_grace(&config);
    let pod = &k8s.gateway()["spec"]["template"]["spec"];
    let termination = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let pre_stop = Duration::from_secs(
        k8s.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("a preStop sleep, so endpoints drop the pod before SIGTERM"),
    );
    assert!(
        termination > pre_stop + grace,
        "terminationGracePeriodSeconds {termination:?} must exceed preStop {pre_stop:?} + shutdown_grace {grace:?}"
    );

    let compose = compose();
    let stop = humantime::parse_duration(str_of(
        &compose_service(&compose, "switchyard")["stop_grace_period"],
        "stop_grace_period",
    ))
    .unwrap();
    let grace = shutdown_grace(&yaml(CONTAINER_CONFIG));
    assert!(
        stop > grace,
        "compose stop_grace_period {stop:?} must exceed shutdown_grace {grace:?}"
    );
}

#[test]
fn the_kubernetes_manifests_fit_together() {
    // The kustomization lists every manifest in the directory.
    let kustomization = yaml(format!("{KUBERNETES}/kustomization.yaml"));
    let listed: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    let present: BTreeSet<String> = files_under(KUBERNETES)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization resources vs files");

    let k8s = Kubernetes::load();
    let deployment = k8s.gateway();
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2);
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Deployment selects its own pods");
    }

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    for deployment in k8s.all("Deployment") {
        for c in deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let name = &c["name"];
            let security = &c["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][kind][resource].is_string(),
                        "{name}: resources.{kind}.{resource}"
                    );
                }
            }
        }
        assert_eq!(
            deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
    }

    let hpa = k8s.get("HorizontalPodAutoscaler", "switchyard");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "switchyard");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);

    let pdb = k8s.get("PodDisruptionBudget", "switchyard");
    assert_eq!(
        k8s.selected_pod(&pdb["spec"]["selector"]["matchLabels"])["metadata"]["name"],
        "switchyard"
    );

    // Everything lives in the namespace the kustomization creates.
    let namespace = str_of(&kustomization["namespace"], "namespace");
    assert_eq!(k8s.get("Namespace", namespace)["kind"], "Namespace");
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules() {
    // Without promtool, at least the structure is checked.
    let rules = alert_rules();
    let tests = read(ALERT_TESTS);
    for rule in &rules {
        let name = str_of(&rule["alert"], "alert name");
        let severity = &rule["labels"]["severity"];
        assert!(
            severity == "warning" || severity == "critical",
            "{name}: severity {severity}"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
        assert!(
            rule["annotations"]["description"].is_string(),
            "{name}: description"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no case in {ALERT_TESTS}"
        );
    }
    for required in [
        "switchyard_requests_total",
        "switchyard_target_healthy",
        "switchyard_rate_limited_total",
        "switchyard_config_reloads_total{result=\"rejected\"}",
    ] {
        assert!(
            rules
                .iter()
                .any(|r| str_of(&r["expr"], "expr").contains(required)),
            "no alert on {required}"
        );
    }
    // The job the instance-down alerts select is the one Prometheus scrapes.
    let prometheus = yaml(PROMETHEUS);
    for rule in &rules {
        if let Some(at) = str_of(&rule["expr"], "expr").find("job=\"") {
            let job = &rule["expr"].as_str().unwrap()[at + 5..];
            let job = &job[..job.find('"').unwrap()];
            assert!(
                prometheus["scrape_configs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|j| j["job_name"] == job),
                "{}: no scrape job {job}",
                rule["alert"]
            );
        }
    }
    assert_eq!(
        strings(&prometheus["rule_files"], "rule_files"),
        ["alerts.yml"]
    );

    if !promtool_available("promtool check config / check rules / test rules") {
        return;
    }
    let out = assert_promtool(&["check", "config", PROMETHEUS], None);
    assert!(out.contains("SUCCESS"), "{out}");
    assert_promtool(&["check", "rules", ALERTS], None);
    assert_promtool(&["test", "rules", ALERT_TESTS], None);
}

#[test]
fn the_dashboard_is_a_provisionable_grafana_dashboard() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["id"].is_null(), "no instance-specific id");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let uid = format!("${{{}}}", str_of(&datasource["name"], "variable name"));

    let mut ids = BTreeSet::new();
    let mut cells: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = str_of(&panel["title"], "title").to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title}: wider than the grid");
        for (ox, oy, ow, oh, other) in &cells {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        cells.push((x, y, w, h, title.clone()));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], uid.as_str(), "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], uid.as_str(), "{title}");
            assert!(t["expr"].is_string(), "{title}");
        }
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"],
            uid.as_str(),
            "variable {}",
            v["name"]
        );
    }

    // The panels the deployment promises.
    let exprs: Vec<String> = dashboard_expressions(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let queried = |needles: &[&str]| exprs.iter().any(|e| needles.iter().all(|n| e.contains(n)));
    for needles in [
        &["rate(switchyard_requests_total"][..],
        &["switchyard_requests_total", "5.."],
        &[
            "histogram_quantile",
            "switchyard_request_duration_seconds_bucket",
        ],
        &[
            "histogram_quantile",
            "switchyard_time_to_first_token_seconds_bucket",
        ],
        &["switchyard_tokens_total", "by (key"],
        &["switchyard_tokens_total", "by (model"],
        &["switchyard_target_healthy"],
        &["switchyard_retries_total"],
        &["switchyard_fallbacks_total"],
        &["switchyard_rate_limited_total"],
        &["switchyard_config_reloads_total"],
        &["switchyard_inflight_requests"],
    ] {
        assert!(queried(needles), "no panel queries {needles:?}");
    }

    // Every query is PromQL that Prometheus parses: promtool checks them as
    // recording rules, Grafana's variables replaced.
    if !promtool_available("the PromQL syntax check of the dashboard") {
        return;
    }
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": without_variables(e)}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = TempDir::new();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    assert_promtool(&["check", "rules", path.to_str().unwrap()], None);
}

#[tokio::test]
async fn dashboards_and_alerts_query_only_what_a_running_gateway_exports() {
    let config = format!(
        r#"
auth: {{required: false}}
keys:
  - {{id: team, sha256: "{}"}}
  - {{id: limited, sha256: "{}", limits: {{rpm: 1}}}}
routing:
  retry: {{attempts: 2, backoff: {{base: 1ms, max: 5ms}}}}
  cooldown: {{after_failures: 1, for: 10m}}
providers:
  demo: {{type: demo, pace: 0s}}
  dead: {{type: openai, base_url: "{}"}}
models:
  demo: {{targets: [{{provider: demo, model: demo}}]}}
  failing: {{targets: [{{provider: demo, model: error-500}}]}}
  broken: {{targets: [{{provider: dead, model: gone}}], fallbacks: [demo]}}
"#,
        digest("sk-team"),
        digest("sk-limited"),
        support::dead_url()
    );
    let gw = Gateway::start(&config);
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let key = [("authorization", "Bearer sk-team")];
    // Tokens and latency, whole and streamed (time to first token).
    assert_eq!(
        client.post(&url, &key, chat("demo", false)).await.status,
        200
    );
    let streamed = client.post(&url, &key, chat("demo", true)).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.events().last().unwrap(), "[DONE]");
    // A backend error: retried, then a 502.
    assert_eq!(
        client.post(&url, &[], chat("failing", false)).await.status,
        502
    );
    // A dead provider: connect retries, a cooldown, then the fallback answers.
    let fell_back = client.post(&url, &[], chat("broken", false)).await;
    assert_eq!(fell_back.status, 200, "{}", fell_back.text());
    // A key over its limit.
    let limited = [("authorization", "Bearer sk-limited")];
    assert_eq!(
        client
            .post(&url, &limited, chat("demo", false))
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .post(&url, &limited, chat("demo", false))
            .await
            .status,
        429
    );
    // An unknown model, and a reload.
    assert_eq!(
        client.post(&url, &[], chat("nope", false)).await.status,
        404
    );
    gw.signal("HUP");
    gw.wait_for_metric("switchyard_config_reloads_total{result=\"ok\"}", 1.0)
        .await;
    gw.wait_for_metric(
        "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"unknown\",provider=\"none\",status=\"404\"}",
        1.0,
    )
    .await;

    let text = client.get(&gw.admin_url("/metrics"), &[]).await.text();
    let exported = exposition(&text);
    assert!(
        text.lines()
            .any(|l| l == "switchyard_target_healthy{model=\"gone\",provider=\"dead\"} 0"),
        "the dead target is in cooldown:\n{text}"
    );

    let mut problems = Vec::new();
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut expressions = dashboard_expressions(&dashboard);
    for rule in alert_rules() {
        expressions.push((
            format!("alert {}", rule["alert"]),
            str_of(&rule["expr"], "expr").to_owned(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (where_, expr) in &expressions {
        check_expression(expr, &exported, where_, &mut problems);
        seen.extend(uses(expr).selectors.into_keys());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check saw the metrics it was meant to see.
    assert!(seen.len() >= 10, "{seen:?}");
    assert!(seen.iter().all(|m| exported.contains_key(m)), "{seen:?}");

    // And the page itself passes Prometheus's own lint.
    if promtool_available("promtool check metrics on a live /metrics page") {
        assert_promtool(&["check", "metrics"], Some(&text));
    }
}

#[test]
fn the_promql_reader_finds_names_and_labels() {
    let u = uses(
        r#"sum by (key, limit) (rate(switchyard_rate_limited_total{key=~"a|b"}[5m])) / on (key) group_left sum by (key) (rate(switchyard_requests_total{status=~"5..|x}", model!="m"}[$__rate_interval]))"#,
    );
    assert_eq!(
        u.selectors.keys().collect::<Vec<_>>(),
        ["switchyard_rate_limited_total", "switchyard_requests_total"]
    );
    assert_eq!(
        u.selectors["switchyard_requests_total"],
        ["model".to_owned(), "status".to_owned()].into()
    );
    assert_eq!(u.grouping, ["key".to_owned(), "limit".to_owned()].into());

    let exported = exposition(
        "# TYPE switchyard_requests_total counter\nswitchyard_requests_total{endpoint=\"chat\",model=\"a,b\",status=\"200\"} 1\n",
    );
    assert_eq!(
        exported["switchyard_requests_total"],
        ["endpoint", "model", "status"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let mut problems = Vec::new();
    check_expression(
        "sum by (provider) (switchyard_requests_total{kind=\"x\"}) + switchyard_nothing",
        &exported,
        "t",
        &mut problems,
    );
    assert_eq!(problems.len(), 3, "{problems:?}");

    assert_eq!(
        without_variables(r#"rate(x{m=~"$model", k=~"${key}"}[$__rate_interval])"#),
        r#"rate(x{m=~".*", k=~".*"}[5m])"#
    );
    let ignore = DockerIgnore(vec![
        (false, vec!["*".into()]),
        (true, vec!["src".into()]),
        (true, vec!["deploy".into(), "config".into()]),
    ]);
    assert!(!ignore.ignores("src/lib.rs"));
    assert!(!ignore.ignores("deploy/config/switchyard.yaml"));
    assert!(ignore.ignores("deploy/compose.yaml"));
    assert!(ignore.ignores("target"));
}

/// Writes `text` the way the kubelet updates a ConfigMap volume: a new
/// timestamped directory, a `..data` symlink swapped to it by rename, and
/// the old directory removed. `switchyard.yaml` links to `..data/`.
fn kubelet_writes(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..2026_01_01_00_00_0{version}.000000001"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("switchyard.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    } else {
        std::os::unix::fs::symlink("..data/switchyard.yaml", dir.join("switchyard.yaml")).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_update_is_picked_up_and_a_bad_one_rejected() {
    let k8s = Kubernetes::load();
    let (shipped, _) = k8s.config();
    // The ConfigMap's config, on ephemeral loopback ports.
    let text = shipped
        .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0")
        .replace("admin_listen: 0.0.0.0:9090", "admin_listen: 127.0.0.1:0");
    assert_ne!(text, shipped);
    let env = k8s.pod_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = TempDir::new();
    kubelet_writes(dir.path(), 1, &text);
    let path = dir.path().join("switchyard.yaml");
    let gw = Gateway::start_file(dir, path, &env);
    let client = Client::new();
    let key = [("authorization", "Bearer sk-sy-demo")];
    let url = gw.url("/v1/chat/completions");
    assert_eq!(
        client.post(&url, &key, chat("demo", false)).await.status,
        200
    );
    assert_eq!(
        client.post(&url, &key, chat("added", false)).await.status,
        404
    );

    // An edited ConfigMap: a new alias.
    let edited = text.replace(
        "\nmodels:\n",
        "\nmodels:\n  added:\n    targets: [{ provider: demo, model: echo }]\n",
    );
    assert_ne!(edited, text);
    kubelet_writes(gw.dir.path(), 2, &edited);
    gw.wait_for_metric("switchyard_config_reloads_total{result=\"ok\"}", 1.0)
        .await;
    assert_eq!(
        client.post(&url, &key, chat("added", false)).await.status,
        200
    );

    // A broken one: rejected, and the running config keeps serving.
    let skip = gw.logs().len();
    let broken = edited.replace("pace: 20ms", "pace: 20 parsecs");
    assert_ne!(broken, edited);
    kubelet_writes(gw.dir.path(), 3, &broken);
    gw.wait_for_metric("switchyard_config_reloads_total{result=\"rejected\"}", 1.0)
        .await;
    gw.wait_for_log("config reload rejected", skip).await;
    assert_eq!(
        client.post(&url, &key, chat("added", false)).await.status,
        200
    );
    assert_eq!(
        gw.metric("switchyard_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
}
