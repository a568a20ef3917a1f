use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("trellis.toml"))
}

fn first_error(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.diagnostics()[0].to_string(),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.control.listen, ControlConfig::DEFAULT_LISTEN);
    assert_eq!(c.control.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.data.dir, std::path::PathBuf::from("./trellis-data"));
}

#[test]
fn full_file_parses() {
    let c = parse(
        r#"
[control]
listen = "0.0.0.0:9901"
token = "s3cret"
shutdown_grace = "1m 30s"

[log]
level = "info,trellis=debug"
format = "json"

[data]
dir = "/var/lib/trellis"
"#,
    )
    .unwrap();
    assert_eq!(c.control.listen.port(), 9901);
    assert_eq!(c.control.token, Some(Secret::new("s3cret")));
    assert_eq!(c.control.shutdown_grace, Duration::from_secs(90));
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn bad_address_names_line_column_and_key() {
    let e = first_error("[control]\nlisten = \"abc\"\n");
    assert!(
        e.starts_with("trellis.toml:2:10: control.listen: invalid socket address \"abc\""),
        "{e}"
    );
}

#[test]
fn bad_duration_names_key() {
    let e = first_error("[control]\n\nshutdown_grace = \"soon\"\n");
    assert!(
        e.starts_with("trellis.toml:3:18: control.shutdown_grace: invalid duration \"soon\""),
        "{e}"
    );
}

#[test]
fn unknown_key_names_the_typo() {
    let e = first_error("[control]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
    assert!(
        e.starts_with("trellis.toml:3:1: control.lisen: unknown field `lisen`"),
        "{e}"
    );
}

#[test]
fn unknown_section_is_an_error() {
    let e = first_error("[contrl]\nlisten = \"127.0.0.1:1\"\n");
    assert!(e.starts_with("trellis.toml:1:"), "{e}");
    assert!(e.contains("contrl: unknown field"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let e = first_error("[log]\nformat = \"json\"\nlevel = 3\n");
    assert!(
        e.starts_with("trellis.toml:3:9: log.level: invalid type: integer"),
        "{e}"
    );
}

#[test]
fn unknown_enum_variant_names_key() {
    let e = first_error("[log]\nformat = \"xml\"\n");
    assert!(
        e.starts_with("trellis.toml:2:10: log.format: unknown variant `xml`"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_location_without_key() {
    let e = first_error("[control]\nlisten = \n");
    assert!(e.starts_with("trellis.toml:2:"), "{e}");
}

#[test]
fn public_listener_without_token_is_rejected_at_the_section() {
    let e = first_error("# public\n[control]\nlisten = \"0.0.0.0:9900\"\n");
    assert!(
        e.starts_with("trellis.toml:2:1: control.token: required"),
        "{e}"
    );
}

#[test]
fn public_listener_with_token_is_accepted() {
    parse("[control]\nlisten = \"0.0.0.0:9900\"\ntoken = \"t\"\n").unwrap();
}

#[test]
fn empty_token_points_at_the_value() {
    let e = first_error("[control]\ntoken = \"\"\n");
    assert!(
        e.starts_with("trellis.toml:2:9: control.token: the token must not be empty"),
        "{e}"
    );
}

#[test]
fn bare_word_log_level_is_rejected() {
    let e = first_error("[log]\nlevel = \"verbose\"\n");
    assert!(
        e.starts_with("trellis.toml:2:9: log.level: unknown level"),
        "{e}"
    );
}

#[test]
fn all_semantic_problems_are_reported() {
    let err = parse("[control]\ntoken = \"\"\n[log]\nlevel = \"loud\"\n").unwrap_err();
    let keys: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| d.key.to_string())
        .collect();
    assert_eq!(keys, ["control.token", "log.level"]);
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let c = parse("[control]\ntoken = \"hunter2\"\n").unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn key_paths_round_trip_through_dotted_form() {
    let p = KeyPath::parse_dotted("routes[2].match.headers[0]");
    assert_eq!(p.to_string(), "routes[2].match.headers[0]");
    assert_eq!(KeyPath::parse_dotted(".").to_string(), "");
}

#[test]
fn nested_validation_locates_array_elements() {
    struct Route(bool);
    impl Validate for Route {
        fn validate(&self, v: &mut Validator) {
            if !self.0 {
                v.invalid("upstream", "no such upstream");
            }
        }
    }
    struct Root(Vec<Route>);
    impl Validate for Root {
        fn validate(&self, v: &mut Validator) {
            v.each("routes", &self.0);
        }
    }
    let mut v = Validator::new();
    Root(vec![Route(true), Route(false)]).validate(&mut v);
    let problems = v.into_problems();
    let text = "[[routes]]\nupstream = \"a\"\n\n[[routes]]\nupstream = \"b\"\n";
    let err = ConfigError::from_problems(text, Path::new("t.toml"), problems);
    assert_eq!(
        err.to_string(),
        "t.toml:5:12: routes[1].upstream: no such upstream"
    );
}

#[test]
fn token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let text = format!(
        "[control]\nlisten = \"0.0.0.0:9900\"\ntoken_file = '{}'\n",
        file.display()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.control.bearer_token(), Ok(Some(Secret::new("from-file"))));
}

#[test]
fn unreadable_token_file_is_reported_at_its_key() {
    let e = first_error("[control]\ntoken_file = '/nonexistent/token'\n");
    assert!(
        e.starts_with("trellis.toml:2:14: control.token_file: cannot read /nonexistent/token"),
        "{e}"
    );
}

#[test]
fn token_and_token_file_are_exclusive() {
    let e = first_error("[control]\ntoken = \"a\"\ntoken_file = '/x'\n");
    assert!(
        e.contains("control.token_file: set either token or token_file"),
        "{e}"
    );
}

/// A section type from another crate whose duration parser runs after
/// deserializing a `String` (outside the visitor), as `humantime` users often
/// write it: the error must still point at the value, not at the table.
#[test]
fn errors_from_post_parse_deserializers_point_at_the_value() {
    fn late_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Upstream {
        name: String,
        #[serde(deserialize_with = "late_duration")]
        timeout: Duration,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Root {
        upstreams: Vec<Upstream>,
    }
    let text = "[[upstreams]]\nname = \"a\"\ntimeout = \"1s\"\n\n[[upstreams]]\nname = \"b\"\ntimeout = \"soon\"\n";
    let err = parse_section::<Root>(text, Path::new("t.toml")).unwrap_err();
    let d = err.diagnostics()[0].to_string();
    assert!(d.starts_with("t.toml:7:11: upstreams[1].timeout: "), "{d}");
}

#[test]
fn string_paths_from_other_validators_are_located() {
    struct Gateway;
    impl Validate for Gateway {
        fn validate(&self, v: &mut Validator) {
            v.invalid_at("routes[1].upstream", "unknown upstream \"x\"");
        }
    }
    let mut v = Validator::new();
    Gateway.validate(&mut v);
    let text = "[[routes]]\nupstream = \"a\"\n[[routes]]\nupstream = \"x\"\n";
    let err = ConfigError::from_problems(text, Path::new("t.toml"), v.into_problems());
    assert_eq!(
        err.to_string(),
        "t.toml:4:12: routes[1].upstream: unknown upstream \"x\""
    );
}
