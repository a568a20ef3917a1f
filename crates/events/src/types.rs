//! The event store's vocabulary: events going in and coming out, expected
//! versions, stream names and categories, metadata, snapshots and limits.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::AppendError;

/// An event to append. `data` and `metadata` are JSON, kept as raw text so
/// that what was sent is what is stored and read back, byte for byte.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventData {
    /// The idempotency key: appending the same ids again returns the original positions.
    #[serde(rename = "eventId", alias = "id")]
    pub id: Uuid,
    #[serde(rename = "eventType", alias = "type")]
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
}

impl EventData {
    /// An event with a fresh id: a UUIDv7, time-ordered, so the ids of
    /// consecutive appends land side by side at the end of the event-id
    /// index instead of on a random page of it each (one page written per
    /// commit instead of one per event).
    pub fn new(event_type: impl Into<String>, data: &impl Serialize) -> serde_json::Result<Self> {
        Ok(EventData {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            data: serde_json::value::to_raw_value(data)?,
            metadata: None,
        })
    }

    /// The same event with a chosen id (to make a retried command idempotent).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    pub fn with_metadata(mut self, metadata: &impl Serialize) -> serde_json::Result<Self> {
        self.metadata = Some(serde_json::value::to_raw_value(metadata)?);
        Ok(self)
    }

    /// Bytes this event counts against [`Limits::max_event_bytes`].
    pub fn size(&self) -> usize {
        self.event_type.len()
            + self.data.get().len()
            + self.metadata.as_ref().map_or(0, |m| m.get().len())
    }
}

/// An event as stored: its stream, per-stream version and global position.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    pub stream: String,
    /// 0 for a stream's first event.
    pub version: u64,
    /// Position in `$all`, from 1, gap-free and in commit order.
    pub position: u64,
    #[serde(rename = "eventId")]
    pub id: Uuid,
    #[serde(rename = "eventType")]
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

pub(crate) fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl RecordedEvent {
    /// Parses the data into a type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.get())
    }

    /// The event as a CloudEvents 1.0 JSON envelope (structured mode).
    ///
    /// `source` identifies the producer (e.g. `/trellis/shop`); the stream is
    /// the `subject`, and the stream, version and position travel as extension
    /// attributes so a consumer can checkpoint and deduplicate.
    pub fn to_cloudevent(&self, source: &str) -> serde_json::Value {
        let data: serde_json::Value =
            serde_json::from_str(self.data.get()).unwrap_or(serde_json::Value::Null);
        let mut ce = serde_json::json!({
            "specversion": "1.0",
            "id": self.id.to_string(),
            "source": source,
            "type": self.event_type,
            "subject": self.stream,
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "datacontenttype": "application/json",
            "data": data,
            "streamversion": self.version,
            "streamposition": self.position,
        });
        if let (Some(m), Some(obj)) = (&self.metadata, ce.as_object_mut()) {
            let meta: serde_json::Value =
                serde_json::from_str(m.get()).unwrap_or(serde_json::Value::Null);
            obj.insert("trellismetadata".into(), meta);
        }
        ce
    }
}

/// What the writer believes the stream's state to be; the append fails with
/// [`AppendError::WrongExpectedVersion`] when it is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (never written, or soft-deleted).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn accepts(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(n) => current == Some(n),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("stream_exists"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = String;

    /// Accepts `any`, `no_stream`, `stream_exists`, a version number, and
    /// EventStoreDB's numeric codes (`-2` any, `-1` no stream, `-4` stream exists).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "any" | "_2" => Ok(ExpectedVersion::Any),
            "no_stream" | "nostream" | "_1" => Ok(ExpectedVersion::NoStream),
            "stream_exists" | "streamexists" | "exists" | "_4" => Ok(ExpectedVersion::StreamExists),
            other => other.parse::<u64>().map(ExpectedVersion::Exact).map_err(|_| {
                format!(
                    "`{}` is not an expected version: use any, no_stream, stream_exists or a version number",
                    s.chars().take(40).collect::<String>()
                )
            }),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Exact(n) => s.serialize_u64(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) if n >= 0 => Ok(ExpectedVersion::Exact(n as u64)),
            Raw::Num(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What a successful append wrote (or, for an idempotent retry, had written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendResult {
    pub first_version: u64,
    /// Pass as `ExpectedVersion::Exact` to the next append.
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// True when these events were already there and nothing was written.
    pub idempotent: bool,
}

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 200;

/// Checks a stream name a client may write: non-empty, at most
/// [`MAX_STREAM_NAME`] bytes, no control characters, not starting with `$`
/// (reserved for system streams such as `$all`).
pub fn validate_stream_name(name: &str) -> Result<(), AppendError> {
    let bad = |reason: &'static str| {
        Err(AppendError::InvalidStreamName {
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_STREAM_NAME {
        return bad("it is longer than 200 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if name.starts_with('$') {
        return bad("names starting with `$` are reserved for system streams");
    }
    Ok(())
}

/// The category of a stream: the part before the first `-` (`order-123` → `order`),
/// or the whole name when it has none.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// Size limits; appends over them fail with a clear error and write nothing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Type + data + metadata of one event.
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_event_type_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1 << 20,
            max_batch_events: 1000,
            max_batch_bytes: 8 << 20,
            max_event_type_len: 200,
        }
    }
}

/// Per-stream retention, applied when the stream is read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamMetadata {
    /// Keep only the newest N events visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Hide events older than this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub max_age: Option<Duration>,
    /// Hide events with a version below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Anything else the application wants to keep with the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Box<RawValue>>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"30d\" or \"250ms\": {e}"
            ))
        })
    }
}

/// How a stream is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Hidden; appending again recreates it, with versions continuing.
    Soft,
    /// Gone for good: it can never be written again.
    Tombstone,
}

/// The latest snapshot of a stream's state, taken at `version`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub stream: String,
    pub version: u64,
    pub data: Box<RawValue>,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

/// Direction of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// A read of one stream.
#[derive(Debug, Clone)]
pub struct ReadStream {
    /// First version to return (inclusive); `None` is the start going
    /// forward and the end going backward.
    pub from: Option<u64>,
    pub direction: Direction,
    pub max_count: usize,
    /// Only these event types, when set.
    pub types: Option<Vec<String>>,
}

impl Default for ReadStream {
    fn default() -> Self {
        ReadStream {
            from: None,
            direction: Direction::Forward,
            max_count: 1000,
            types: None,
        }
    }
}

/// A read of `$all` or a category, by global position.
#[derive(Debug, Clone)]
pub struct ReadAll {
    /// First position to return (inclusive); `None` is the start going
    /// forward and the end going backward.
    pub from: Option<u64>,
    pub direction: Direction,
    pub max_count: usize,
    pub types: Option<Vec<String>>,
}

impl Default for ReadAll {
    fn default() -> Self {
        ReadAll {
            from: None,
            direction: Direction::Forward,
            max_count: 1000,
            types: None,
        }
    }
}

/// A page of one stream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// The stream's last version.
    pub stream_version: u64,
    /// Where the next page starts, or `None` at the end.
    pub next: Option<u64>,
}
