//! `trellis --help`, `--version` and `check`, run as a user would.

mod common;

use common::{run, text, Workspace};

#[test]
fn help_lists_the_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["up", "check"] {
        assert!(help.contains(&format!("  {cmd} ")), "{help}");
    }
    let out = run(&["check", "--help"]);
    assert!(text(&out.stdout).contains("--config <FILE>"));
}

#[test]
fn version_prints_the_package_version() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("trellis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_accepts_a_valid_config_with_a_one_line_summary() {
    let ws = Workspace::new();
    let config = ws.config(
        r#"# a complete config
[control]
listen = "0.0.0.0:9900"
token = "0123456789abcdef"
shutdown_grace = "250ms"

[log]
level = "info,trellis=debug"
format = "json"

[data]
dir = "./state"
"#,
    );
    let out = ws.check(&config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("0.0.0.0:9900"), "{stdout}");
    assert!(
        !stdout.contains("0123456789abcdef"),
        "the token must not be printed"
    );
}

#[test]
fn check_accepts_an_empty_config() {
    let ws = Workspace::new();
    let out = ws.check(&ws.config(""));
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("127.0.0.1:9900"));
}

/// Runs `check` on `config`, expects failure, and returns stderr.
fn check_fails(config: &str) -> (String, String) {
    let ws = Workspace::new();
    let path = ws.config(config);
    let out = ws.check(&path);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(out.stdout.is_empty());
    (text(&out.stderr), path.display().to_string())
}

#[test]
fn check_reports_a_syntax_error_with_line_and_column() {
    let (err, file) = check_fails("[control]\nlisten = \"127.0.0.1:1\"\ntoken = \n");
    assert!(err.starts_with(&format!("{file}:3:")), "{err}");
}

#[test]
fn check_reports_an_unknown_key_by_name() {
    let (err, file) = check_fails("[log]\nlevel = \"info\"\nformt = \"json\"\n");
    assert!(
        err.starts_with(&format!("{file}:3:1: log.formt: unknown field `formt`")),
        "{err}"
    );
    assert!(err.contains("did you mean `format`?"), "{err}");
}

#[test]
fn check_reports_a_wrong_type() {
    let (err, file) = check_fails("[control]\nshutdown_grace = 5\n");
    assert!(
        err.starts_with(&format!(
            "{file}:2:18: control.shutdown_grace: invalid type: integer"
        )),
        "{err}"
    );
}

#[test]
fn check_reports_a_bad_duration() {
    let (err, file) = check_fails("\n[control]\nshutdown_grace = \"5 fortnights\"\n");
    assert!(
        err.starts_with(&format!(
            "{file}:3:18: control.shutdown_grace: invalid duration"
        )),
        "{err}"
    );
}

#[test]
fn check_reports_a_bad_address() {
    let (err, file) = check_fails("[control]\n    listen = \"abc\"\n");
    assert!(
        err.starts_with(&format!(
            "{file}:2:14: control.listen: invalid socket address \"abc\""
        )),
        "{err}"
    );
}

#[test]
fn check_requires_a_token_beyond_loopback() {
    let (err, file) =
        check_fails("[log]\nlevel = \"info\"\n\n[control]\nlisten = \"0.0.0.0:9900\"\n");
    assert!(
        err.starts_with(&format!("{file}:4:1: control.token: required")),
        "{err}"
    );
    assert!(err.contains("0.0.0.0:9900"), "{err}");
}

#[test]
fn check_reports_every_semantic_problem() {
    let (err, _) = check_fails("[control]\ntoken = \"\"\n[log]\nlevel = \"chatty\"\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains(":2:9: control.token:"), "{err}");
    assert!(lines[1].contains(":4:9: log.level:"), "{err}");
}

#[test]
fn check_names_a_missing_file() {
    let out = run(&["check", "-c", "/nonexistent/trellis.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("/nonexistent/trellis.toml: cannot read config"));
}

#[test]
fn auth_hash_key_reads_stdin_and_matches_gen_key() {
    use std::io::Write;
    let generated = common::run(&["auth", "gen-key"]);
    assert!(generated.status.success());
    let out = common::text(&generated.stdout);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .map(str::trim)
        .expect("a key line");
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("hash:"))
        .map(str::trim)
        .expect("a hash line");
    assert!(hash.starts_with("sha256:"), "{hash}");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["auth", "hash-key"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let hashed = child.wait_with_output().unwrap();
    assert!(hashed.status.success());
    assert_eq!(common::text(&hashed.stdout).trim(), hash);

    let empty = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["auth", "hash-key"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
    assert!(common::text(&empty.stderr).contains("no key on stdin"));
}

#[test]
fn check_locates_cors_mistakes_in_a_route() {
    let (err, file) = check_fails(
        r#"[[routes]]
name = "app"
upstream = "up"

[routes.cors]
allowed_origins = ["https://app.example.com", "https://app.example.com/"]
allow_credentials = true

[[routes]]
name = "any"
upstream = "up"
cors = { allowed_origins = ["*"], allow_credentials = true }

[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:8081"]
"#,
    );
    assert!(
        err.contains(&format!(
            "{file}:6:47: routes[0].cors.allowed_origins[1]: \"https://app.example.com/\": an origin is scheme://host[:port]"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:12:29: routes[1].cors.allowed_origins[0]: \"*\" cannot be combined with allow_credentials = true"
        )),
        "{err}"
    );
}
