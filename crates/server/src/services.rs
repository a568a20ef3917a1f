//! `trellis services`: what a running node's registry holds, service by
//! service and instance by instance, with each instance's health. It reads
//! the registry's REST API (`/v1/registry`) on the control port, the same
//! API a user would script against.

use serde_json::{json, Value};

use crate::client::{ClientError, ControlClient};

/// Every service (or only `only`) with all its instances, healthy or not,
/// as `{"services": [{"service": NAME, "instances": [...]}, ...]}`.
pub async fn fetch(client: &ControlClient, only: Option<&str>) -> Result<Value, ClientError> {
    let names: Vec<String> = match only {
        Some(name) => vec![name.to_owned()],
        None => {
            let (_, body) = client.get_json("/v1/registry/services").await?;
            body["services"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|s| s["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    let mut services = Vec::with_capacity(names.len());
    for name in names {
        let path = format!(
            "/v1/registry/services/{}?healthy=false",
            percent_encode(&name)
        );
        let (_, body) = client.get_json(&path).await?;
        let instances = body.get("instances").cloned().unwrap_or_else(|| json!([]));
        services.push(json!({"service": name, "instances": instances}));
    }
    Ok(json!({ "services": services }))
}

/// One line per instance, columns aligned; a service without instances
/// gets a line saying so.
pub fn render(doc: &Value) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "INSTANCE".to_owned(),
        "ADDRESS".to_owned(),
        "STATUS".to_owned(),
        "CHECK".to_owned(),
        "TAGS".to_owned(),
    ]];
    let services = doc["services"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for service in services {
        let name = text(&service["service"]);
        let instances = service["instances"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if instances.is_empty() {
            rows.push([
                name.clone(),
                "-".into(),
                "-".into(),
                "no instances".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for instance in instances {
            let tags: Vec<String> = instance["tags"]
                .as_array()
                .map(|t| t.iter().map(text).collect())
                .unwrap_or_default();
            rows.push([
                name.clone(),
                text(&instance["id"]),
                authority(instance),
                text(&instance["status"]),
                text(&instance["health"]),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(",")
                },
            ]);
        }
    }
    if rows.len() == 1 {
        return "no services registered\n".to_owned();
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn authority(instance: &Value) -> String {
    let address = text(&instance["address"]);
    let port = text(&instance["port"]);
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Service names are validated by the registry, but a name typed on the
/// command line is not: anything outside the unreserved set is escaped.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_aligned_line_per_instance() {
        let doc = json!({"services": [
            {"service": "orders", "instances": [
                {"id": "orders-1", "address": "10.0.0.1", "port": 8080, "status": "passing",
                 "health": "http", "tags": ["v1", "eu"]},
                {"id": "orders-22", "address": "::1", "port": 9, "status": "critical",
                 "health": "ttl", "tags": []}
            ]},
            {"service": "billing", "instances": []}
        ]});
        let out = render(&doc);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].contains("orders-1") && lines[1].contains("10.0.0.1:8080"));
        assert!(lines[1].contains("passing") && lines[1].ends_with("v1,eu"));
        assert!(lines[2].contains("[::1]:9") && lines[2].contains("critical"));
        assert!(lines[3].starts_with("billing") && lines[3].contains("no instances"));
        // Columns line up: every row's INSTANCE column starts at one offset.
        let at = lines[0].find("INSTANCE");
        assert_eq!(lines[1].find("orders-1"), at);
        assert_eq!(lines[2].find("orders-22"), at);
    }

    #[test]
    fn says_so_when_nothing_is_registered() {
        assert_eq!(render(&json!({"services": []})), "no services registered\n");
        assert_eq!(render(&json!({})), "no services registered\n");
    }

    #[test]
    fn escapes_what_a_path_segment_cannot_hold() {
        assert_eq!(percent_encode("orders-v2.eu_1"), "orders-v2.eu_1");
        assert_eq!(percent_encode("a/b c?"), "a%2Fb%20c%3F");
    }
}
