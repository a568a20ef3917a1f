//! Deserializers for the value types config files use everywhere: durations
//! written like `"250ms"` and socket addresses.
//!
//! They parse inside a serde `Visitor` rather than after deserializing a
//! `String`, because only errors raised inside the visitor get the value's
//! span from the TOML deserializer, and the span is what gives `check` its
//! line and column. Sections in this crate use them with
//! `#[serde(deserialize_with = "de::duration")]`; component crates, which
//! cannot depend on the binary, get the same effect from `humantime-serde`.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{Deserializer, Error, Visitor};

/// A duration in humantime form: `"250ms"`, `"30s"`, `"1m 30s"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(ParseStr::new(
        "a duration such as \"250ms\" or \"30s\"",
        |s| humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}")),
    ))
}

/// An optional humantime duration (absent means `None`).
pub fn option_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A socket address such as `"127.0.0.1:9900"` or `"[::1]:9900"`.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(ParseStr::new(
        "a socket address such as \"127.0.0.1:9900\"",
        |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!("invalid socket address {s:?} (expected IP:PORT, e.g. \"127.0.0.1:9900\")")
            })
        },
    ))
}

/// A visitor that accepts only strings and parses them with `parse`.
pub struct ParseStr<T, F> {
    expecting: &'static str,
    parse: F,
    _out: PhantomData<fn() -> T>,
}

impl<T, F: FnOnce(&str) -> Result<T, String>> ParseStr<T, F> {
    /// `expecting` completes "invalid type: ..., expected ...".
    pub fn new(expecting: &'static str, parse: F) -> Self {
        ParseStr {
            expecting,
            parse,
            _out: PhantomData,
        }
    }
}

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for ParseStr<T, F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: Error>(self, s: &str) -> Result<T, E> {
        (self.parse)(s).map_err(E::custom)
    }
}
