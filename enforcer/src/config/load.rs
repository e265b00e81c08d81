//! Reading the YAML document with errors that name the field path.

use std::path::{Path, PathBuf};

use super::{EnforcerConfig, ValidationErrors, validate_config};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A YAML syntax or type error, with the path of the offending field (e.g. `rules[2].action`).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// Parses and validates a config document.
pub fn parse_yaml(text: &str) -> Result<EnforcerConfig, ConfigError> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let config: EnforcerConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." {
            "(document)".to_owned()
        } else {
            path
        };
        let message = err.into_inner().to_string();
        // serde_yaml_ng prefixes its own (shorter) path; ours is more precise.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => {
                rest.to_owned()
            }
            _ => message,
        };
        ConfigError::Parse { path, message }
    })?;
    validate_config(&config)?;
    Ok(config)
}

/// Reads, parses and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<EnforcerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse_yaml(
            "upstream:\n  url: http://127.0.0.1:1\nrules:\n  - name: a\n    colour: red\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rules[0].colour: unknown field `colour`"),
            "{err}"
        );
    }

    #[test]
    fn bad_operation_is_named_with_its_path() {
        let yaml = r#"
upstream: { url: "http://127.0.0.1:1" }
rules:
  - name: a
    requires: { operation: "POST /t", after: ["GET /a"] }
  - name: b
    maxRepeat: { operation: "POST /t", count: 2 }
  - name: c
    requires: { operation: "POST /t", after: ["GET /a", "GET accounts"] }
"#;
        let err = parse_yaml(yaml).unwrap_err().to_string();
        assert!(
            err.contains("rules[2].requires.after[1]: invalid operation \"GET accounts\""),
            "{err}"
        );
    }

    #[test]
    fn jwks_sections_are_checked_naming_the_field() {
        let with = |jwt: &str| {
            parse_yaml(&format!(
                "upstream: {{ url: \"http://127.0.0.1:1\" }}\nsession:\n  jwtVerification: {jwt}\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            with("{ jwks: { uri: \"https://idp.example/certs\" } }"),
            Ok(())
        );
        assert_eq!(
            with("{ jwks: { file: /etc/ordo/jwks/jwks.json, refreshInterval: 30s } }"),
            Ok(())
        );
        for (jwt, expected) in [
            (
                "{ keys: [] }",
                "session.jwtVerification.keys: must list at least one key",
            ),
            (
                "{ jwks: { file: /a, uri: \"https://idp/certs\" } }",
                "session.jwtVerification.jwks: exactly one of file, uri",
            ),
            (
                "{ jwks: {} }",
                "session.jwtVerification.jwks: exactly one of file, uri",
            ),
            (
                "{ jwks: { uri: \"http://idp/certs\" } }",
                "session.jwtVerification.jwks.uri: must be an https:// URL",
            ),
            (
                "{ jwks: { uri: \"https://idp:70000/certs\" } }",
                "session.jwtVerification.jwks.uri: invalid URL",
            ),
            (
                "{ jwks: { file: /a, caFile: /ca.crt } }",
                "session.jwtVerification.jwks.caFile: only applies to uri",
            ),
            (
                "{ jwks: { file: /a, refreshInterval: 500ms } }",
                "session.jwtVerification.jwks.refreshInterval: must be between 1s and 24h",
            ),
        ] {
            let err = with(jwt).unwrap_err();
            assert!(err.contains(expected), "{jwt}: {err}");
        }
    }

    #[test]
    fn bad_report_section_is_rejected_at_load() {
        let yaml = "upstream: { url: \"http://127.0.0.1:1\" }\nreport:\n  url: https://ordo-operator.ordo-system.svc:8443\n  tokenFile: /var/run/secrets/ordo/token\n";
        let err = parse_yaml(yaml).unwrap_err().to_string();
        assert!(
            err.contains("report.caFile: required for an https url"),
            "{err}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse_yaml("upstream:\n  url: http://127.0.0.1:8081\n").unwrap();
        assert_eq!(config.mode, super::super::Mode::Monitor);
        assert_eq!(config.session.history.requests, 10);
        assert_eq!(config.session.identifiers.len(), 2);
    }
}
