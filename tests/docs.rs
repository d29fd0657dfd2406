//! The operator documentation stays true to the code: every setting (`OAUTH_RELAY_*`,
//! `OAUTH_CALLBACK_*`, `WK_*`) named in the README, `docs/` or `deploy/` is one the relay reads
//! (a flag's environment variable, or a provider setting a kind declares), every URL of the
//! relay shown in the README or `docs/` is a route of the routing table on the listener its host
//! stands for, every relative link leads to a file (and to a heading of it, where it names one),
//! every page under `docs/` is linked from the README, and each provider guide shows its
//! redirect URI.

use clap::CommandFactory;
use oauth_relay::routes::{Exposure, Pattern, ROUTES};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every page under `docs/`, at any depth.
fn docs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&root().join("docs"), &mut files);
    files.retain(|f| f.extension().is_some_and(|e| e == "md"));
    files.sort();
    for page in [
        "docs/api.md",
        "docs/configuration.md",
        "docs/providers/README.md",
    ] {
        assert!(files.contains(&root().join(page)), "{page} in {files:?}");
    }
    files
}

/// The README and every page under `docs/`: what a reader of the documentation reads.
fn pages() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    files.extend(docs());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every environment variable clap declares, for `serve` and every subcommand.
fn declared_variables() -> Vec<String> {
    fn walk(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(var) = arg.get_env() {
                out.push(var.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&oauth_relay::config::Cli::command(), &mut out);
    out
}

/// The provider settings (`OAUTH_RELAY_PROVIDER_<NAME>_<SETTING>`): the common ones and each
/// kind's own, as the kinds' registry declares them (`provider::every_setting`), the list the
/// relay itself checks those variables against.
fn provider_settings() -> Vec<String> {
    let settings: Vec<String> = oauth_relay::provider::every_setting()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(settings.len() >= 10, "{settings:?}");
    settings
}

const PROVIDER_PREFIX: &str = "OAUTH_RELAY_PROVIDER_";

/// Names the docs give to variables that are not the relay's: docs/api.md's example keeps a
/// retrieval secret in one (`wait --retrieval-secret-env NAME`), and the bench scripts are told
/// the binary to measure by another (`bench/front.sh`).
const CALLERS_OWN: &[&str] = &["OAUTH_RELAY_RETRIEVAL_SECRET", "OAUTH_RELAY_BIN"];

struct Settings {
    declared: Vec<String>,
    provider: Vec<String>,
}

impl Settings {
    fn load() -> Settings {
        Settings {
            declared: declared_variables(),
            provider: provider_settings(),
        }
    }

    /// Whether `name` is a variable the relay reads.
    fn exists(&self, name: &str) -> bool {
        if self.declared.iter().any(|d| d == name) {
            return true;
        }
        // OAUTH_RELAY_PROVIDER_<NAME>_<SETTING>, <NAME> not empty.
        name.strip_prefix(PROVIDER_PREFIX).is_some_and(|rest| {
            self.provider.iter().any(|setting| {
                rest.strip_suffix(setting.as_str())
                    .and_then(|name| name.strip_suffix('_'))
                    .is_some_and(|name| !name.is_empty())
            })
        })
    }

    /// Whether `prefix` (written as `OAUTH_RELAY_WEBHOOK_*` or `OAUTH_RELAY_PROVIDER_<NAME>_...`)
    /// begins a variable the relay reads.
    fn begins_one(&self, prefix: &str) -> bool {
        prefix.starts_with(PROVIDER_PREFIX) || self.declared.iter().any(|d| d.starts_with(prefix))
    }
}

/// The setting names in `text`: (name, whether it is written as a prefix: followed by `*`, `<`
/// or `{`, as in `OAUTH_RELAY_WEBHOOK_*`).
fn names_in(text: &str) -> Vec<(String, bool)> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["OAUTH_RELAY_", "OAUTH_CALLBACK_", "WK_"]
            .iter()
            .any(|p| bytes[i..].starts_with(p.as_bytes()));
        let boundary = i == 0 || !(is_name(bytes[i - 1]) || bytes[i - 1].is_ascii_alphabetic());
        if !(starts && boundary) {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !is_name(bytes[j]))
            .unwrap_or(bytes.len());
        let prefix = bytes.get(end).is_some_and(|b| b"*<{".contains(b)) || bytes[end - 1] == b'_';
        out.push((text[i..end].to_string(), prefix));
        i = end;
    }
    out
}

#[test]
fn every_setting_named_in_the_docs_exists() {
    let settings = Settings::load();
    let mut files = pages();
    files_under(&root().join("deploy"), &mut files);
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (name, prefix) in names_in(&text) {
            seen += 1;
            if CALLERS_OWN.contains(&name.as_str()) {
                continue;
            }
            let ok = if prefix {
                settings.begins_one(&name)
            } else {
                settings.exists(&name)
            };
            if !ok {
                wrong.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} setting names found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "not settings of the relay:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_setting_check_refuses_what_the_relay_would() {
    let settings = Settings::load();
    for real in [
        "OAUTH_RELAY_MAX_PENDING",
        "OAUTH_CALLBACK_PORT",
        "WK_M365_TENANT_ID",
        "WK_CALLBACK_SERVER",
        "OAUTH_RELAY_PROVIDERS",
        "OAUTH_RELAY_PROVIDER_CORP_EU_CLIENT_SECRET_FILE",
        "OAUTH_RELAY_PROVIDER_GOOGLE_HOSTED_DOMAIN",
    ] {
        assert!(settings.exists(real), "{real}");
    }
    for made_up in [
        "OAUTH_RELAY_MAX_PENDNG",
        "WK_M365_TENANT",
        "OAUTH_RELAY_PROVIDER_GITHUB_CLIENTSECRET",
        "OAUTH_RELAY_PROVIDER__KIND",
        "OAUTH_RELAY_PROVIDER_KIND",
    ] {
        assert!(!settings.exists(made_up), "{made_up}");
    }
    assert!(settings.begins_one("OAUTH_RELAY_WEBHOOK_"));
    assert!(!settings.begins_one("OAUTH_RELAY_WEBHOOKS_"));
    assert_eq!(
        names_in("set `OAUTH_RELAY_WEBHOOK_*` and WK_M365_SCOPES=x, not XWK_A"),
        [
            ("OAUTH_RELAY_WEBHOOK_".to_string(), true),
            ("WK_M365_SCOPES".to_string(), false)
        ]
    );
}

/// Whether `path` (placeholders such as `<name>` already replaced) is a route of `exposure`.
/// Stricter than the router's own match: a tail (a state, link id or provider name) is one path
/// segment, so `/login/github/callbak` is not taken for a login link.
fn is_route(path: &str, exposure: Exposure) -> bool {
    ROUTES.iter().filter(|r| r.exposure == exposure).any(|r| {
        let one_segment = |tail: &str| !tail.is_empty() && !tail.contains('/');
        match r.pattern {
            Pattern::Exact(p) => path == p,
            Pattern::Prefix(p) => path.strip_prefix(p).is_some_and(one_segment),
            Pattern::Around(prefix, suffix) => path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(one_segment),
        }
    })
}

/// The relay's hosts in the docs, and the listener each stands for.
const HOSTS: &[(&str, Exposure)] = &[
    ("https://relay.example.com", Exposure::Public),
    ("http://oauth-relay-internal", Exposure::Internal),
];

/// The paths of the relay's URLs in `text`, with the listener their host stands for; `<...>` and
/// `{...}` placeholders become one segment.
fn relay_paths(text: &str) -> Vec<(String, Exposure)> {
    let mut out = Vec::new();
    for (host, exposure) in HOSTS {
        for (at, _) in text.match_indices(host) {
            let rest = &text[at + host.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || "`)\"'],".contains(c))
                .unwrap_or(rest.len());
            let url = &rest[..end];
            // The rest of the host (`.<namespace>.svc`), then the port.
            let Some(slash) = url.find('/') else { continue };
            let path = url[slash..].split(['?', '#']).next().unwrap();
            // `...` stands for a value (a link id); one `.` or `:` after a URL ends a sentence.
            let path = path.replace("...", "x");
            let path = path.trim_end_matches(['.', ':', ';']);
            let mut clean = String::new();
            let mut depth = 0;
            for c in path.chars() {
                match c {
                    '<' | '{' => {
                        depth += 1;
                        if depth == 1 {
                            clean.push('x');
                        }
                    }
                    '>' | '}' => depth -= 1,
                    c if depth == 0 => clean.push(c),
                    _ => {}
                }
            }
            out.push((clean, *exposure));
        }
    }
    out
}

#[test]
fn every_relay_url_in_the_docs_is_a_route() {
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in pages() {
        for (path, exposure) in relay_paths(&read(&file)) {
            seen += 1;
            if !is_route(&path, exposure) {
                wrong.push(format!("{}: {path} ({exposure:?})", file.display()));
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} relay URLs found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "not routes of the relay:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_route_check_refuses_what_the_router_would() {
    let found = relay_paths(
        "`https://relay.example.com/login/<name>/callback`, https://relay.example.com/m365/start/...\n\
         http://oauth-relay-internal.ns.svc:8001/sessions and https://relay.example.com.",
    );
    assert_eq!(
        found,
        [
            ("/login/x/callback".to_string(), Exposure::Public),
            ("/m365/start/x".to_string(), Exposure::Public),
            ("/sessions".to_string(), Exposure::Internal),
        ]
    );
    for (path, exposure) in &found {
        assert!(is_route(path, *exposure), "{path}");
    }
    assert!(!is_route("/login/github/callbak", Exposure::Public));
    assert!(!is_route("/m365/callbacks", Exposure::Public));
    assert!(!is_route("/sessions", Exposure::Public), "internal only");
    assert!(!is_route("/callback", Exposure::Internal), "public only");
}

#[test]
fn each_guide_shows_its_redirect_uri() {
    for (guide, redirect) in [
        ("microsoft.md", "https://relay.example.com/m365/callback"),
        (
            "microsoft.md",
            "https://relay.example.com/login/<name>/callback",
        ),
        (
            "microsoft.pt-BR.md",
            "https://relay.example.com/m365/callback",
        ),
        (
            "microsoft.pt-BR.md",
            "https://relay.example.com/login/<nome>/callback",
        ),
        (
            "google.md",
            "https://relay.example.com/login/google/callback",
        ),
        (
            "github.md",
            "https://relay.example.com/login/github/callback",
        ),
        ("oidc.md", "https://relay.example.com/login/corp/callback"),
    ] {
        let text = read(&root().join("docs/providers").join(guide));
        assert!(text.contains(redirect), "{guide}: {redirect}");
    }
}

/// The text of `markdown` outside fenced code blocks and inline code spans, where a `[..](..)`
/// or a `#` is markdown rather than an example.
fn prose(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Every other piece between backticks is code.
        let text: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, piece)| piece)
            .collect::<Vec<_>>()
            .join(" ");
        out.push(text);
    }
    out
}

/// A heading's anchor, by GitHub's rule: lowercase, punctuation other than `-` and `_` dropped,
/// each space a `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings; a repeated one gets `-1`, `-2`, ... as on GitHub.
fn anchors(markdown: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if fenced || !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[level..].replace('`', ""));
        let repeats = out
            .iter()
            .filter(|a| {
                **a == base
                    || a.strip_prefix(&format!("{base}-"))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count();
        out.push(if repeats == 0 {
            base
        } else {
            format!("{base}-{repeats}")
        });
    }
    out
}

/// The targets of the inline links (`[text](target)`, images too) in `markdown`'s prose.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(markdown) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].trim().to_string());
        }
    }
    out
}

/// A relative link's file, from the page it is on, and its fragment; `None` for an absolute URL.
fn resolve(page: &Path, target: &str) -> Option<(PathBuf, Option<String>)> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment.to_string())),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(path)
    };
    Some((file, fragment))
}

#[test]
fn every_link_leads_to_a_file_and_its_heading() {
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut with_fragment = 0;
    for page in pages() {
        for target in links(&read(&page)) {
            let Some((file, fragment)) = resolve(&page, &target) else {
                continue;
            };
            seen += 1;
            let Ok(file) = file.canonicalize() else {
                wrong.push(format!("{}: {target} leads to no file", page.display()));
                continue;
            };
            if !file.starts_with(root()) {
                wrong.push(format!(
                    "{}: {target} leads out of the repository",
                    page.display()
                ));
            }
            let Some(fragment) = fragment else { continue };
            with_fragment += 1;
            let is_markdown = file.extension().is_some_and(|e| e == "md");
            if !is_markdown || !anchors(&read(&file)).contains(&fragment) {
                wrong.push(format!(
                    "{}: {target}: no heading #{fragment} in {}",
                    page.display(),
                    file.display()
                ));
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} relative links found: is the scan broken?"
    );
    assert!(
        with_fragment > 50,
        "only {with_fragment} links to headings found"
    );
    assert!(
        wrong.is_empty(),
        "links that lead nowhere:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = root().join("README.md");
    let linked: Vec<PathBuf> = links(&read(&readme))
        .iter()
        .filter_map(|target| resolve(&readme, target))
        .filter_map(|(file, _)| file.canonicalize().ok())
        .collect();
    let unlinked: Vec<String> = docs()
        .into_iter()
        .filter(|page| !linked.contains(&page.canonicalize().unwrap()))
        .map(|page| page.display().to_string())
        .collect();
    assert!(
        unlinked.is_empty(),
        "pages the README does not link to:\n{}",
        unlinked.join("\n")
    );
}

#[test]
fn the_link_check_reads_markdown_as_github_does() {
    assert_eq!(
        anchor("A retrieval secret: the state alone is not enough"),
        "a-retrieval-secret-the-state-alone-is-not-enough"
    );
    assert_eq!(
        anchor("Web pages on other origins (CORS)"),
        "web-pages-on-other-origins-cors"
    );
    assert_eq!(
        anchor("Keys, hash tags and the upgrade to this version"),
        "keys-hash-tags-and-the-upgrade-to-this-version"
    );
    assert_eq!(
        anchor("Registrar o relay_x no Entra ID: é"),
        "registrar-o-relay_x-no-entra-id-é"
    );
    let page = "# Title\n\n## Logs\n\n```sh\n# not a heading\necho [x](nowhere.md)\n```\n\n\
                ## Logs\n\n#nope\n\nSee [the logs](#logs-1), `[code](not-a-link.md)` and ![a](b.png).\n";
    assert_eq!(anchors(page), ["title", "logs", "logs-1"]);
    assert_eq!(links(page), ["#logs-1", "b.png"]);
    let readme = root().join("README.md");
    assert_eq!(
        resolve(&readme, "docs/api.md#command-line"),
        Some((root().join("docs/api.md"), Some("command-line".to_string())))
    );
    assert_eq!(resolve(&readme, "https://example.com/x#y"), None);
}

/// Where the docs say which Rust builds the project, they say what `Cargo.toml` declares.
#[test]
fn the_rust_version_named_in_the_docs_is_cargo_tomls() {
    let manifest = read(&root().join("Cargo.toml"));
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml declares rust-version");
    let mut named = 0;
    for page in pages() {
        let text = read(&page).replace('\n', " ");
        for (i, _) in text.match_indices(" or newer") {
            let Some(version) = text[..i].rsplit(' ').next() else {
                continue;
            };
            if text[..i].ends_with(&format!("Rust {version}")) {
                assert_eq!(version, declared, "{}", page.display());
                named += 1;
            }
        }
    }
    assert!(named >= 2, "the README and docs/development.md name it");
}

/// docs/development.md's source tree names every module at the top of `src/` (a file or a
/// directory), so a newcomer finds each one's job there.
#[test]
fn the_source_tree_names_every_module() {
    let tree = read(&root().join("docs/development.md"));
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "lib.rs" || name == "main.rs" {
            continue;
        }
        let named = if path.is_dir() {
            tree.contains(&format!("src/{name}/"))
        } else {
            tree.contains(&format!("src/{name}")) || tree.contains(&format!(" {name} "))
        };
        if !named {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/development.md: {missing:?}"
    );
}
