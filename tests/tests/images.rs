//! `scripts/images` assembles images with the layout docs/images.md promises, reproducibly.
//!
//! Building the release binaries takes far too long for the test suite, so the assembly step
//! (`scripts/images assemble`) runs on a stand-in: this test's own executable, a Rust binary
//! that links what the real ones link. The script needs root (file owners in the layers) and
//! apt (the runtime layer comes from Debian packages), as it does for the real build.
//!
//! The chart, the operator and the script must also agree on the image names and tag.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ordo_tests::cluster::workspace_root;
use serde_json::Value;

const STANDIN: &str = "ordo-standin";
/// 2023-11-14T22:13:20Z: any fixed time does; the created label and every mtime must be it.
const EPOCH: &str = "1700000000";
const CREATED: &str = "2023-11-14T22:13:20Z";
const NONROOT: &str = "65532";

fn run(command: &mut Command) -> String {
    String::from_utf8(run_bytes(command)).unwrap()
}

fn run_bytes(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs `scripts/images assemble` with a work directory of its own; returns the printed digest.
fn assemble(work: &Path, archive: &Path) -> String {
    let root = workspace_root();
    let standin = std::env::current_exe().unwrap();
    let stdout = run(Command::new(root.join("scripts/images"))
        .args(["assemble", STANDIN])
        .arg(&standin)
        .arg(archive)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("ORDO_IMAGE_WORK", work)
        // Fixed, so that an edit of the working tree between the two runs changes nothing.
        .env("ORDO_IMAGE_REVISION", git_head())
        .env_remove("ORDO_IMAGE_REGISTRY"));
    // NAME <tab> REF <tab> DIGEST <tab> SIZE <tab> ARCHIVE
    let fields: Vec<&str> = stdout.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 5, "unexpected report line: {stdout}");
    assert_eq!(fields[0], STANDIN);
    assert_eq!(
        fields[1],
        format!("ghcr.io/ordo-dev/{STANDIN}:{}", app_version())
    );
    assert!(fields[2].starts_with("sha256:"), "{stdout}");
    fields[2].to_owned()
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(workspace_root().join("charts/ordo/Chart.yaml")).unwrap();
    let chart: serde_yaml_ng::Value = serde_yaml_ng::from_str(&chart).unwrap();
    chart["appVersion"].as_str().unwrap().to_owned()
}

/// An unpacked OCI archive: its blobs by digest.
struct Archive {
    dir: PathBuf,
}

impl Archive {
    fn unpack(archive: &Path, into: &Path) -> Self {
        std::fs::create_dir_all(into).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into));
        Self {
            dir: into.to_owned(),
        }
    }

    fn json(&self, path: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join(path)).unwrap()).unwrap()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn blob(&self, digest: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.blob_path(digest)).unwrap()).unwrap()
    }

    /// The one manifest of the archive, with its digest and reference name.
    fn manifest(&self) -> (String, String, Value) {
        let index = self.json("index.json");
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        let digest = manifests[0]["digest"].as_str().unwrap().to_owned();
        let name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_owned();
        let manifest = self.blob(&digest);
        (digest, name, manifest)
    }

    /// Every entry of every layer: path -> (mode string, owner "uid/gid", date and time).
    fn entries(&self, manifest: &Value) -> BTreeMap<String, (String, String, String)> {
        let mut entries = BTreeMap::new();
        for layer in manifest["layers"].as_array().unwrap() {
            let listing = run(Command::new("tar")
                .args(["--numeric-owner", "--full-time", "-tvzf"])
                .arg(self.blob_path(layer["digest"].as_str().unwrap())));
            for line in listing.lines() {
                // drwxr-xr-x 0/0 0 2023-11-14 22:13:20 etc/   (or "a -> b" for a link)
                let fields: Vec<&str> = line.split_whitespace().collect();
                let path = fields[5].trim_start_matches("./").trim_end_matches('/');
                let time = format!("{} {}", fields[3], fields[4]);
                entries.insert(
                    path.to_owned(),
                    (fields[0].to_owned(), fields[1].to_owned(), time),
                );
            }
        }
        entries
    }

    fn layer_file(&self, manifest: &Value, index: usize, path: &str) -> Vec<u8> {
        let layer = manifest["layers"][index]["digest"].as_str().unwrap();
        run_bytes(
            Command::new("tar")
                .arg("-xzOf")
                .arg(self.blob_path(layer))
                .arg(path),
        )
    }
}

fn git_head() -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "HEAD"]))
    .trim()
    .to_owned()
}

#[test]
fn assembled_image_has_the_documented_layout_and_is_reproducible() {
    let scratch = tempfile::tempdir().unwrap();
    let first = scratch.path().join("first.oci.tar");
    let second = scratch.path().join("second.oci.tar");
    let digest = assemble(&scratch.path().join("work-1"), &first);
    let again = assemble(&scratch.path().join("work-2"), &second);
    assert_eq!(digest, again, "two assemblies of the same input differ");

    let archive = Archive::unpack(&first, &scratch.path().join("unpacked"));
    let (manifest_digest, ref_name, manifest) = archive.manifest();
    assert_eq!(manifest_digest, digest);
    assert_eq!(
        ref_name,
        format!("ghcr.io/ordo-dev/{STANDIN}:{}", app_version())
    );

    let image = archive.blob(manifest["config"]["digest"].as_str().unwrap());
    let config = &image["config"];
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([format!("/usr/local/bin/{STANDIN}")])
    );
    assert!(config["Cmd"].is_null(), "no default arguments: {config}");
    assert_eq!(image["created"], CREATED);
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.created"], CREATED);
    assert_eq!(labels["org.opencontainers.image.version"], app_version());
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/ordo-dev/ordo"
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(revision.starts_with(&git_head()), "{revision}");

    // Two layers: the runtime, then the binary.
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    let entries = archive.entries(&manifest);
    for needed in [
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "usr/share/doc/libc6/copyright",
        "tmp",
        "usr/local/bin/ordo-standin",
    ] {
        assert!(
            entries.contains_key(needed),
            "{needed} missing: {entries:?}"
        );
    }
    assert!(
        entries["tmp"].0.starts_with("drwxrwxrwt"),
        "{:?}",
        entries["tmp"]
    );
    for (path, (mode, owner, time)) in &entries {
        let name = path.rsplit('/').next().unwrap_or(path);
        assert!(
            !["sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg"].contains(&name),
            "{path}: no shell or package manager in the image"
        );
        assert!(
            !path.starts_with("usr/bin") && !path.starts_with("bin"),
            "{path}"
        );
        let expected_owner = if path == "home/nonroot" {
            format!("{NONROOT}/{NONROOT}")
        } else {
            "0/0".to_owned()
        };
        assert_eq!(owner, &expected_owner, "{path} ({mode})");
        assert_eq!(time, "2023-11-14 22:13:20", "{path}");
    }

    let text = |path| String::from_utf8(archive.layer_file(&manifest, 0, path)).unwrap();
    let passwd = text("etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("nonroot:x:{NONROOT}:{NONROOT}:"))),
        "{passwd}"
    );
    let group = text("etc/group");
    assert!(
        group.lines().any(|l| l == format!("nonroot:x:{NONROOT}:")),
        "{group}"
    );
    let certs = text("etc/ssl/certs/ca-certificates.crt");
    assert!(certs.matches("-----BEGIN CERTIFICATE-----").count() > 100);
    let binary = archive.layer_file(&manifest, 1, "usr/local/bin/ordo-standin");
    assert!(binary == std::fs::read(std::env::current_exe().unwrap()).unwrap());
}

#[test]
fn chart_operator_and_script_agree_on_image_names_and_tag() {
    let root = workspace_root();
    let version = app_version();
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        workspace.contains(&format!("\nversion = \"{version}\"\n")),
        "the workspace version must be the chart's appVersion {version}"
    );
    let values = std::fs::read_to_string(root.join("charts/ordo/values.yaml")).unwrap();
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(&values).unwrap();
    assert_eq!(
        values["image"]["repository"].as_str(),
        Some("ghcr.io/ordo-dev/ordo-operator")
    );
    assert_eq!(
        values["enforcer"]["image"]["repository"].as_str(),
        Some("ghcr.io/ordo-dev/ordo-enforcer")
    );
    let operator = std::fs::read_to_string(root.join("operator/src/main.rs")).unwrap();
    assert!(
        operator.contains(&format!(
            "default_value = \"ghcr.io/ordo-dev/ordo-enforcer:{version}\""
        )),
        "the operator's default enforcer image must be ghcr.io/ordo-dev/ordo-enforcer:{version}"
    );
    let script = std::fs::read_to_string(root.join("scripts/images")).unwrap();
    for name in ["ordo-operator", "ordo-enforcer"] {
        assert!(
            script.contains(&format!("assemble {name} ")),
            "scripts/images must build {name}"
        );
    }
    assert!(script.contains("${ORDO_IMAGE_REGISTRY:-ghcr.io/ordo-dev}"));
}

/// What the Containerfile and `scripts/images` each give an image: the fields docs/images.md
/// promises are the same whichever way the image is built.
#[derive(Debug, Default)]
struct Layout {
    user: Option<String>,
    workdir: Option<String>,
    entrypoint: Option<Vec<String>>,
    /// Environment variables by name (the last setting wins, as in the image config).
    env: BTreeMap<String, String>,
    /// `org.opencontainers.image.*` labels by key; values as written, variables unexpanded.
    labels: BTreeMap<String, String>,
}

/// The lines of a shell script or Containerfile with continuations (a trailing backslash)
/// joined and comment lines left out.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if current.is_empty() && line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The words of a line as a shell splits them: blanks separate, quotes group and are removed
/// (no escapes or expansions; neither file needs them where this reads).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.get_or_insert_default().push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            None if c.is_whitespace() => words.extend(word.take()),
            None => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// `KEY=VALUE` as a pair.
fn key_value(word: &str) -> (String, String) {
    let (key, value) = word
        .split_once('=')
        .unwrap_or_else(|| panic!("expected KEY=VALUE, found {word:?}"));
    (key.to_owned(), value.to_owned())
}

/// The Containerfile's stage `stage` (`FROM ... AS <stage>`): its USER, WORKDIR, ENTRYPOINT,
/// ENV and LABEL instructions.
fn containerfile_layout(containerfile: &str, stage: &str) -> Layout {
    let mut layout = Layout::default();
    let mut in_stage = false;
    for line in logical_lines(containerfile) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let rest = rest.trim();
        if instruction.eq_ignore_ascii_case("FROM") {
            let from = words(rest);
            in_stage = matches!(from.as_slice(), [_, keyword, name] if keyword.eq_ignore_ascii_case("AS") && name == stage);
            continue;
        }
        if !in_stage {
            continue;
        }
        match instruction.to_ascii_uppercase().as_str() {
            "USER" => layout.user = Some(rest.to_owned()),
            "WORKDIR" => layout.workdir = Some(rest.to_owned()),
            "ENTRYPOINT" => {
                let exec_form = serde_json::from_str(rest).unwrap_or_else(|e| {
                    panic!("stage {stage}: ENTRYPOINT {rest} is not the exec (JSON) form: {e}")
                });
                layout.entrypoint = Some(exec_form);
            }
            "ENV" => layout.env.extend(words(rest).iter().map(|w| key_value(w))),
            "LABEL" => layout.labels.extend(
                words(rest)
                    .iter()
                    .filter(|w| w.starts_with("org.opencontainers.image."))
                    .map(|w| key_value(w)),
            ),
            _ => {}
        }
    }
    assert!(
        layout.user.is_some(),
        "no stage {stage} with a USER in the Containerfile"
    );
    layout
}

/// What `scripts/images` gives image `name`: the `umoci config` options of `configure_image`
/// and its `labels` array, with the script's `readonly` constants and `$name` expanded, and
/// `$(image_description)` resolved from the `image_description` function.
fn script_layout(script: &str, name: &str) -> Layout {
    let mut variables = vec![("name".to_owned(), name.to_owned())];
    for line in script.lines() {
        if let Some((variable, value)) = line
            .strip_prefix("readonly ")
            .and_then(|assignment| assignment.split_once('='))
            .filter(|(_, value)| !value.starts_with('('))
        {
            variables.push((variable.to_owned(), value.to_owned()));
        }
    }
    let description = script
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{name}) echo ")))
        .map(|l| words(l)[0].clone())
        .unwrap_or_else(|| panic!("no description of {name} in image_description"));
    variables.push(("(image_description)".to_owned(), description));
    // The longest names first, so that no name is replaced inside a longer one.
    variables.sort_by_key(|(variable, _)| std::cmp::Reverse(variable.len()));
    let expand = |word: &str| {
        variables
            .iter()
            .fold(word.to_owned(), |word, (variable, value)| {
                word.replace(&format!("${{{variable}}}"), value)
                    .replace(&format!("${variable}"), value)
            })
    };

    let body = script
        .split_once("\nconfigure_image() {\n")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .expect("scripts/images has a function configure_image")
        .0;
    let mut layout = Layout::default();
    let words: Vec<String> = logical_lines(body).iter().flat_map(|l| words(l)).collect();
    for pair in words.windows(2) {
        let value = expand(&pair[1]);
        match pair[0].as_str() {
            "--config.user" => layout.user = Some(value),
            "--config.workingdir" => layout.workdir = Some(value),
            "--config.entrypoint" => layout.entrypoint = Some(vec![value]),
            "--config.env" => layout.env.extend([key_value(&value)]),
            _ => {}
        }
    }
    for word in &words {
        if word.starts_with("org.opencontainers.image.") {
            let (key, value) = key_value(&expand(word));
            layout.labels.insert(key, value);
        }
    }
    layout
}

/// The Containerfile (for users with a container engine) and `scripts/images` (this machine)
/// must build the same layout: a change on one side only fails here.
#[test]
fn containerfile_and_script_agree_on_the_image_layout() {
    let root = workspace_root();
    let containerfile = std::fs::read_to_string(root.join("Containerfile")).unwrap();
    let script = std::fs::read_to_string(root.join("scripts/images")).unwrap();
    for name in ["ordo-operator", "ordo-enforcer"] {
        let engine = containerfile_layout(&containerfile, name);
        let daemonless = script_layout(&script, name);
        println!("{name}: Containerfile {engine:?}\n{name}: scripts/images {daemonless:?}");

        assert_eq!(
            engine.user.as_deref(),
            Some(format!("{NONROOT}:{NONROOT}").as_str()),
            "{name}: the Containerfile's USER"
        );
        assert_eq!(engine.user, daemonless.user, "{name}: user");
        assert_eq!(engine.workdir.as_deref(), Some("/home/nonroot"));
        assert_eq!(
            engine.workdir, daemonless.workdir,
            "{name}: working directory"
        );
        assert_eq!(
            engine.entrypoint,
            Some(vec![format!("/usr/local/bin/{name}")]),
            "{name}: the Containerfile's ENTRYPOINT"
        );
        assert_eq!(
            engine.entrypoint, daemonless.entrypoint,
            "{name}: entrypoint"
        );
        assert_eq!(
            engine.env.get("SSL_CERT_FILE").map(String::as_str),
            Some("/etc/ssl/certs/ca-certificates.crt"),
            "{name}: the Containerfile's SSL_CERT_FILE"
        );
        assert_eq!(
            engine.env.get("SSL_CERT_FILE"),
            daemonless.env.get("SSL_CERT_FILE"),
            "{name}: SSL_CERT_FILE"
        );

        // The same label keys; the same values where neither side fills one in at build time
        // (a variable or a build argument: version, revision, created).
        let keys = |layout: &Layout| layout.labels.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&engine), keys(&daemonless), "{name}: label keys");
        for key in ["source", "version", "revision", "created"] {
            let key = format!("org.opencontainers.image.{key}");
            assert!(engine.labels.contains_key(&key), "{name}: no label {key}");
        }
        for (key, value) in &engine.labels {
            let other = &daemonless.labels[key];
            if !value.contains('$') && !other.contains('$') {
                assert_eq!(value, other, "{name}: label {key}");
            }
        }
    }
}
