//! Typed configuration read from a [`Source`], with every error collected
//! before any is reported.
//!
//! Binaries read the process environment through [`EnvSource`]; tests pass a
//! [`MapSource`] and never touch the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Where configuration values come from.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSource;

impl Source for EnvSource {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A fixed map, for tests and for config assembled by other code.
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub BTreeMap<String, String>);

impl MapSource {
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Source for MapSource {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// One bad value: which variable, what it held, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.key, self.value, self.reason)
    }
}

/// Every bad value found while reading one config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The variables refused, in the order they were read.
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.key.as_str()).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} error(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Reads variables from a source and remembers every failure, so a config
/// can be read field by field and all of its errors reported at once.
pub struct Reader<'a, S: Source + ?Sized> {
    source: &'a S,
    errors: Vec<ConfigError>,
}

impl<'a, S: Source + ?Sized> Reader<'a, S> {
    pub fn new(source: &'a S) -> Self {
        Self {
            source,
            errors: Vec::new(),
        }
    }

    /// Reads `key` with `parse`, or returns `default` when it is unset.
    /// On a parse failure the error is recorded and `default` returned.
    pub fn parse_with<T>(
        &mut self,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.source.get(key) {
            None => default,
            Some(raw) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(reason) => {
                    self.errors.push(ConfigError {
                        key: key.to_string(),
                        value: raw,
                        reason,
                    });
                    default
                }
            },
        }
    }

    /// Reads any `FromStr` value.
    pub fn get<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_with(key, default, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    /// Reads a duration written as `300ms`, `10s`, `2m` (a bare number is
    /// refused: the unit is part of the value).
    pub fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.parse_with(key, default, parse_duration)
    }

    /// Records an error found by checks across several fields.
    pub fn invalid(&mut self, key: &str, value: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            value: value.into(),
            reason: reason.into(),
        });
    }

    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Parses `500ms`, `3s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "a duration needs a unit: ms, s, m or h".to_string())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "a duration starts with a whole number".to_string())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!(
            "unknown duration unit {other:?}: use ms, s, m or h"
        )),
    }
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Serializes a duration as [`format_duration`] writes it (`300ms`, `10s`),
/// for `#[serde(serialize_with = "serialize_duration")]` on a config field.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serializes a value by its `Display` (an enum such as
/// [`LogFormat`](crate::telemetry::LogFormat) as the word that selects it).
pub fn serialize_display<S: serde::Serializer, T: fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One documented variable: (name, default, meaning with unit). Each
/// binary's config module lists every variable it reads in a `VARIABLES`
/// table of these.
pub type Variable = (&'static str, &'static str, &'static str);

/// A default longer than this (a URL) pushes only its own line's meaning to
/// the right, not every line's.
const HELP_DEFAULT_WIDTH: usize = 34;

/// The `--help` listing of `variables`: `heading`, then one line per
/// variable, in aligned columns of name, default and meaning.
pub fn env_help(heading: &str, variables: &[Variable]) -> String {
    let name_width = variables.iter().map(|v| v.0.len()).max().unwrap_or(0);
    let default_width = variables
        .iter()
        .map(|v| v.1.len())
        .filter(|&n| n <= HELP_DEFAULT_WIDTH)
        .max()
        .unwrap_or(0);
    let mut s = format!("{heading}\n");
    for (name, default, what) in variables {
        s.push_str(&format!(
            "  {name:<name_width$} {default:<default_width$} {what}\n"
        ));
    }
    s
}

/// Parses a port list such as `25,443,4000-4010`.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(part.parse::<PortRange>()?);
    }
    Ok(out)
}

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl From<u16> for PortRange {
    /// The range of one port.
    fn from(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("port range {s:?} runs backwards"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn ports() {
        let p = parse_ports("25, 4000-4002").unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[0].contains(25) && !p[0].contains(26));
        assert!(p[1].contains(4001) && !p[1].contains(4003));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("9-3").is_err());
        assert!(parse_ports("http").is_err());
        assert_eq!(parse_ports("").unwrap(), vec![]);
    }

    #[test]
    fn env_help_aligns_columns() {
        let help = env_help(
            "ENVIRONMENT:",
            &[
                ("T_LISTEN", "0.0.0.0:1", "where to listen"),
                ("T_A_LONGER_NAME", "", "no default"),
                (
                    "T_URL",
                    "https://a-very-long-default.example.com/path",
                    "long",
                ),
            ],
        );
        assert_eq!(
            help,
            "ENVIRONMENT:\n\
             \x20 T_LISTEN        0.0.0.0:1 where to listen\n\
             \x20 T_A_LONGER_NAME           no default\n\
             \x20 T_URL           https://a-very-long-default.example.com/path long\n"
        );
    }

    #[test]
    fn serializers() {
        #[derive(serde::Serialize)]
        struct S {
            #[serde(serialize_with = "serialize_duration")]
            d: Duration,
            #[serde(serialize_with = "serialize_display")]
            p: PortRange,
        }
        let mut out = Vec::new();
        let s = S {
            d: Duration::from_millis(250),
            p: PortRange { first: 1, last: 3 },
        };
        serde::Serialize::serialize(&s, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"d":"250ms","p":"1-3"}"#
        );
    }

    #[test]
    fn reader_collects_every_error() {
        let src = MapSource::new([("A", "x"), ("B", "5"), ("C", "1y")]);
        let mut r = Reader::new(&src);
        let a: u32 = r.get("A", 1);
        let b: u32 = r.get("B", 1);
        let c = r.duration("C", Duration::from_secs(1));
        let d: u32 = r.get("D", 7);
        assert_eq!((a, b, c, d), (1, 5, Duration::from_secs(1), 7));
        let errs = r.finish().unwrap_err();
        assert_eq!(errs.keys(), ["A", "C"]);
    }
}
