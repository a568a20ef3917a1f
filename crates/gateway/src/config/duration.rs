//! Durations in the config are humantime strings (`"250ms"`, `"30s"`,
//! `"1m 30s"`), so a reader never has to guess the unit.

use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

/// A `Duration` read from a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {text:?}: {e} (write e.g. \"250ms\" or \"30s\")"
        ))
    })
}

/// An optional `Duration` read from a humantime string.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}
