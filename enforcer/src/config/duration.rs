//! Durations written the way the CRDs write them: `500ms`, `30s`, `10m`, `1h30m`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `std::time::Duration` that (de)serializes as a compact human string (`10m`, `1h30m`, `250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub fn as_millis_u64(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn std(self) -> std::time::Duration {
        self.0
    }

    /// Parses `500ms`, `30s`, `10m`, `2h`, `1h30m` (also anything `humantime` accepts).
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(Self)
            .map_err(|e| format!("invalid duration {text:?}: {e} (expected e.g. \"500ms\", \"30s\", \"10m\", \"1h30m\")"))
    }
}

impl fmt::Display for Duration {
    /// Exact: a duration shown is the duration loaded (`1h30m`, `250ms`; below a millisecond,
    /// which the parser takes too, `1ms500us`, `6ns`; and beyond `u64::MAX` milliseconds).
    /// Showing `6ns` as `0s`, or a huge duration by its saturated milliseconds, made a config
    /// that loads differently from how it serialises (found by the `config` fuzz target).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if secs == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let parts = [
            (secs / 3600, "h"),
            (secs % 3600 / 60, "m"),
            (secs % 60, "s"),
            (u64::from(nanos / 1_000_000), "ms"),
            (u64::from(nanos / 1000 % 1000), "us"),
            (u64::from(nanos % 1000), "ns"),
        ];
        for (value, unit) in parts {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compact_form() {
        for text in ["250ms", "30s", "10m", "1h30m", "2h", "1m5s"] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert!(Duration::parse("ten minutes").is_err());
    }

    #[test]
    fn what_is_shown_loads_back_exactly() {
        for text in ["6ns", "1ms500us", "2s7ns", "1h1us"] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.to_string(), text);
            assert_eq!(Duration::parse(&d.to_string()), Ok(d));
        }
        let odd = Duration(std::time::Duration::new(3_725, 1_002_003));
        assert_eq!(odd.to_string(), "1h2m5s1ms2us3ns");
        assert_eq!(Duration::parse(&odd.to_string()), Ok(odd));
        // More milliseconds than a u64 holds (the fuzz target's second find).
        let huge = Duration(std::time::Duration::from_secs(999_999_999_999_999_920));
        assert_eq!(Duration::parse(&huge.to_string()), Ok(huge));
    }
}
