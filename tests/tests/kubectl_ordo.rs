//! `kubectl ordo` on the local control plane: an ApiProtection with a populated status
//! (written through the status subresource, as the operator does) and its SequenceRules are
//! read by the plugin binary with the test cluster's kubeconfig. The text views are checked
//! for content; the HTML report and the SVG graph are opened in headless Chromium (Debian
//! `chromium`), whose DOM dump must show the incidents and the graph's nodes and whose
//! screenshot must show the rendered nodes and severity badges, so that a page that does not
//! parse or render fails the test.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_tests::cluster::TestCluster;
use ordo_tests::e2e::{self, yaml_documents};
use serde_json::{Value, json};

fn dynamic<K: Resource<DynamicType = ()>>(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()))
}

/// Creates `manifest` without its status, then writes the status through the subresource.
async fn create_with_status(api: &Api<DynamicObject>, manifest: Value) -> Result<()> {
    let name = manifest["metadata"]["name"]
        .as_str()
        .context("manifest without a name")?
        .to_owned();
    let mut without_status = manifest.clone();
    if let Some(object) = without_status.as_object_mut() {
        object.remove("status");
    }
    let object: DynamicObject = serde_json::from_value(without_status)?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {name}"))?;
    if !manifest["status"].is_null() {
        let status = json!({
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "status": manifest["status"],
        });
        api.patch_status(
            &name,
            &PatchParams::apply("ordo-e2e").force(),
            &Patch::Apply(status),
        )
        .await
        .with_context(|| format!("writing the status of {name}"))?;
    }
    Ok(())
}

fn at(now: Timestamp, seconds_ago: i64) -> String {
    Timestamp::from_second(now.as_second() - seconds_ago)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

const PRODUCTS: &str = "GET /api/products";
const PRODUCT: &str = "GET /api/products/{id}";
const ADD: &str = "POST /api/cart/items";
const CART: &str = "GET /api/cart";
const CHECKOUT: &str = "POST /api/checkout";
const PAY: &str = "POST /api/payments";
const ORDER: &str = "GET /api/orders/{id}";
const LOGIN: &str = "POST /api/login";
/// In no learned sequence and no rule: drawn apart.
const EXPORT: &str = "GET /api/export";

const CRITICAL_SUMMARY: &str = "Session jwt:sub=7001 (10.9.8.7) called POST /api/payments 140 times without POST /api/checkout before it";
const HIGH_SUMMARY: &str = "Session jwt:sub=7002 (10.9.8.8) read 62 distinct orders via GET /api/orders/{id} in 3 minutes; 99% of sessions read at most 4";

fn suggested(name: &str, namespace: &str, operation: &str, after: &str, within: i64) -> Value {
    let yaml = format!(
        "apiVersion: ordo.dev/v1alpha1\nkind: SequenceRule\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  protectionRef:\n    name: shop\n  priority: 100\n  action: Log\n  description: Suggested by Ordo\n  requires:\n    operation: {operation}\n    after:\n    - {after}\n    within:\n      requests: {within}\n      duration: 10m\n"
    );
    json!({ "name": name, "reason": format!("{after} precedes 99% of {operation}"), "yaml": yaml })
}

/// The status of the `shop` ApiProtection: what the operator would write after learning a
/// small web shop and seeing four incidents (two open, within the hour; two older).
fn shop_status(now: Timestamp, namespace: &str) -> Value {
    let endpoint = |op: &str, requests: i64, p50: i64, p90: i64, p99: i64| json!({ "operation": op, "requests": requests, "p50": p50, "p90": p90, "p99": p99, "suggestedLimit": p99 * 2, "confidence": "High" });
    let sequence = |ops: &[&str], precedence: f64, count: i64| json!({ "operations": ops, "precedence": precedence, "count": count });
    let incident = |id: &str,
                    severity: &str,
                    open: bool,
                    ago: i64,
                    blocked: i64,
                    kinds: &[&str],
                    ops: &[&str],
                    summary: &str| {
        json!({
            "id": id, "severity": severity, "open": open, "session": format!("jwt:sub={id}"),
            "client": "10.9.8.7", "kinds": kinds, "operations": ops, "requests": blocked + 20,
            "flagged": blocked + 10, "blocked": blocked, "firstSeen": at(now, ago + 300),
            "lastSeen": at(now, ago), "summary": summary,
        })
    };
    json!({
        "observedGeneration": 1,
        "conditions": [
            { "type": "Ready", "status": "True", "reason": "Protecting", "message": "2 of 2 enforcers ready and reporting", "lastTransitionTime": at(now, 7200) },
            { "type": "ModelMature", "status": "True", "reason": "ThresholdsMet", "message": "learned from 52000 requests and 1800 sessions", "lastTransitionTime": at(now, 7000) },
        ],
        "phase": "Protecting",
        "enforcers": { "desired": 2, "ready": 2, "reporting": 2 },
        "model": { "requests": 52000, "sessions": 1800, "endpoints": 9, "lastUpdate": at(now, 30), "mature": true },
        "endpoints": [
            endpoint(PRODUCTS, 9000, 4, 9, 17),
            endpoint(PRODUCT, 7000, 3, 8, 15),
            endpoint(ADD, 3000, 1, 3, 6),
            endpoint(CART, 2500, 1, 2, 5),
            endpoint(LOGIN, 1200, 1, 1, 3),
            endpoint(CHECKOUT, 900, 1, 1, 2),
            endpoint(PAY, 880, 1, 1, 2),
            endpoint(ORDER, 600, 1, 2, 4),
            endpoint(EXPORT, 12, 1, 1, 1),
        ],
        // The login and the catalogue answer without credentials; the login returns tokens and
        // the orders e-mail addresses and phone numbers (as the operator orders it: both first).
        "posture": [
            { "operation": LOGIN, "answers": 1200, "unauthenticatedAnswers": 1200, "sensitiveClasses": ["token"] },
            { "operation": PRODUCTS, "answers": 9000, "unauthenticatedAnswers": 6100 },
            { "operation": ORDER, "answers": 600, "unauthenticatedAnswers": 0, "sensitiveClasses": ["email", "phone"] },
        ],
        "topSequences": [
            sequence(&[LOGIN, PRODUCTS], 0.6, 1100),
            sequence(&[PRODUCTS, PRODUCT], 0.93, 6500),
            sequence(&[PRODUCT, ADD], 0.97, 2900),
            sequence(&[PRODUCT, PRODUCTS], 0.3, 2000),
            sequence(&[ADD, CART, CHECKOUT], 0.95, 850),
            sequence(&[CHECKOUT, PAY], 0.98, 870),
            sequence(&[PAY, ORDER], 0.7, 590),
        ],
        "suggestedRules": [
            suggested("require-get-cart-before-post-checkout", namespace, CHECKOUT, CART, 10),
            // The same `requires` as the declared payment-after-checkout: left out.
            suggested("require-post-checkout-before-post-payments", namespace, PAY, CHECKOUT, 10),
        ],
        "incidents": [
            incident("inc-low-4", "Low", false, 2 * 86_400, 0, &["ShapeDeviation"], &[PRODUCTS], "Session jwt:sub=7004 sent an unusual query to GET /api/products."),
            incident("inc-crit-1", "Critical", true, 300, 120, &["SequenceRule"], &[PAY], CRITICAL_SUMMARY),
            incident("inc-med-3", "Medium", false, 3 * 3600, 0, &["Volume"], &[PRODUCT], "Session jwt:sub=7003 read 900 products in 10 minutes; 99% of sessions read at most 15."),
            incident("inc-high-2", "High", true, 1200, 30, &["Enumeration"], &[ORDER], HIGH_SUMMARY),
        ],
        "totals": { "requests": 52000, "flagged": 400, "blocked": 910, "incidents": 12, "openIncidents": 2 },
    })
}

fn rules(namespace: &str) -> Vec<Value> {
    let rule = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["protectionRef"] = json!({ "name": "shop" });
        json!({ "apiVersion": "ordo.dev/v1alpha1", "kind": "SequenceRule", "metadata": { "name": name, "namespace": namespace }, "spec": spec })
    };
    vec![
        rule(
            "payment-after-checkout",
            json!({ "action": "Block", "requires": { "operation": PAY, "after": [CHECKOUT] } }),
        ),
        rule(
            "no-order-scraping",
            json!({ "maxRepeat": { "operation": ORDER, "count": 5 } }),
        ),
        rule(
            "human-checkout",
            json!({ "minInterval": { "from": CART, "to": CHECKOUT, "duration": "2s" } }),
        ),
        rule(
            "no-login-after-payment",
            json!({ "forbids": { "sequence": [PAY, LOGIN] } }),
        ),
    ]
}

/// The `shop` ApiProtection with its status and four SequenceRules, and `broken`, whose one
/// suggestion the CRD's CEL rules refuse (a window too short for its sequence).
async fn populate(client: &Client, namespace: &str) -> Result<()> {
    let now = Timestamp::now();
    let protections = dynamic::<ApiProtection>(client, namespace);
    create_with_status(
        &protections,
        json!({
            "apiVersion": "ordo.dev/v1alpha1", "kind": "ApiProtection",
            "metadata": { "name": "shop", "namespace": namespace },
            "spec": { "target": { "service": "shop", "port": 8080 }, "mode": "Enforce" },
            "status": shop_status(now, namespace),
        }),
    )
    .await?;
    create_with_status(
        &protections,
        json!({
            "apiVersion": "ordo.dev/v1alpha1", "kind": "ApiProtection",
            "metadata": { "name": "broken", "namespace": namespace },
            "spec": { "target": { "service": "broken", "port": 80 } },
            "status": {
                "phase": "Learning",
                "suggestedRules": [suggested("too-short-window", namespace, CHECKOUT, CART, 1)],
            },
        }),
    )
    .await?;
    let sequence_rules = dynamic::<SequenceRule>(client, namespace);
    for rule in rules(namespace) {
        create_with_status(&sequence_rules, rule).await?;
    }
    Ok(())
}

/// Runs the plugin with the test cluster's kubeconfig.
struct Plugin {
    binary: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
}

impl Plugin {
    fn new(cluster: &TestCluster, namespace: &str) -> Result<Self> {
        Ok(Self {
            binary: e2e::plugin_binary()?,
            kubeconfig: cluster.kubeconfig_path().to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let mut command = std::process::Command::new(&self.binary);
        command.args(args).args(["-n", &self.namespace]);
        if !args.contains(&"--kubeconfig") {
            command.arg("--kubeconfig").arg(&self.kubeconfig);
        }
        command
            .env_remove("KUBECONFIG")
            .output()
            .with_context(|| format!("running kubectl-ordo {args:?}"))
    }

    /// stdout of a run that must succeed.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args)?;
        if !output.status.success() {
            bail!(
                "kubectl ordo {args:?} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// stderr of a run that must fail with exit code 1.
    fn fails(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args)?;
        if output.status.code() != Some(1) {
            bail!(
                "kubectl ordo {args:?} should exit with 1, got {} (stdout: {})",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8(output.stderr)?)
    }
}

#[tokio::test]
async fn status_incidents_suggest_and_graph_show_the_status() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("kubectl-ordo").await?;
    populate(&client, &namespace).await?;
    let plugin = Plugin::new(cluster, &namespace)?;

    // Status: one screen for one ApiProtection.
    let status = plugin.ok(&["status", "shop"])?;
    for wanted in [
        "Enforce",
        "Protecting",
        "mature",
        "52,000 requests",
        "2/2 ready, 2 reporting",
        "2 open: Critical 1, High 1",
        "~150 in the last hour",
        "4 declared",
        "1 suggested",
        "ModelMature",
        "2 operations answer without credentials, 2 return sensitive values (1 both)",
    ] {
        assert!(
            status.contains(wanted),
            "status lacks {wanted:?}:\n{status}"
        );
    }
    // The posture, one line per operation: who answers without credentials, what it returns.
    let posture_row = |op: &str| {
        status
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{op} ")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        posture_row(LOGIN),
        format!("{LOGIN} 1,200 of 1,200 token"),
        "{status}"
    );
    assert_eq!(
        posture_row(PRODUCTS),
        format!("{PRODUCTS} 6,100 of 9,000 –"),
        "{status}"
    );
    assert_eq!(
        posture_row(ORDER),
        format!("{ORDER} – email, phone"),
        "{status}"
    );
    // Without a name: a table of the namespace; -o json is the same summary.
    let list = plugin.ok(&["status"])?;
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("shop") && list.contains("broken"), "{list}");
    let json: Value = serde_json::from_str(&plugin.ok(&["status", "shop", "-o", "json"])?)?;
    assert_eq!(json["blocked"]["lastHour"], 150);
    assert_eq!(json["incidents"]["openBySeverity"]["Critical"], 1);
    assert_eq!(json["rules"]["declared"], 4);
    assert_eq!(json["posture"][0]["operation"], LOGIN);
    assert_eq!(json["posture"][1]["unauthenticatedAnswers"], 6100);
    assert_eq!(
        json["posture"][2]["sensitiveClasses"],
        json!(["email", "phone"])
    );
    assert!(list.contains("2 no-auth, 2 sensitive"), "{list}");

    // Incidents: most severe first, with the summaries; filters by severity and age.
    let incidents = plugin.ok(&["incidents", "shop"])?;
    let lines: Vec<&str> = incidents.lines().collect();
    assert_eq!(lines.len(), 5, "{incidents}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SUMMARY"),
        "{incidents}"
    );
    assert!(
        lines[1].starts_with("inc-crit-1") && lines[1].contains(CRITICAL_SUMMARY),
        "{incidents}"
    );
    assert!(
        lines[2].starts_with("inc-high-2") && lines[2].contains(HIGH_SUMMARY),
        "{incidents}"
    );
    assert!(lines[4].starts_with("inc-low-4"), "{incidents}");
    let high: Value = serde_json::from_str(&plugin.ok(&[
        "incidents",
        "shop",
        "--severity",
        "high",
        "-o",
        "json",
    ])?)?;
    let ids: Vec<&str> = high
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["inc-crit-1", "inc-high-2"]);
    assert_eq!(high[0]["protection"], "shop");
    assert_eq!(high[0]["summary"], CRITICAL_SUMMARY);
    let recent: Value = serde_yaml_ng::from_str(&plugin.ok(&[
        "incidents",
        "shop",
        "--since",
        "4h",
        "-o",
        "yaml",
    ])?)?;
    let recent: Vec<&str> = recent
        .as_array()
        .context("a sequence")?
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(recent, ["inc-crit-1", "inc-high-2", "inc-med-3"]);
    let err = plugin.fails(&["incidents", "shop", "--since", "soon"])?;
    assert!(err.contains("--since"), "{err}");

    // Suggest: one YAML document per rule, ready to apply; the declared one left out.
    let yaml = plugin.ok(&["suggest", "shop"])?;
    let documents = yaml_documents(&yaml)?;
    assert_eq!(documents.len(), 1, "{yaml}");
    assert_eq!(documents[0]["kind"], "SequenceRule");
    assert_eq!(
        documents[0]["metadata"]["name"],
        "require-get-cart-before-post-checkout"
    );
    assert_eq!(documents[0]["metadata"]["namespace"], namespace.as_str());
    assert_eq!(documents[0]["spec"]["requires"]["after"][0], CART);
    assert!(
        yaml.contains(&format!("# {CART} precedes 99% of {CHECKOUT}")),
        "{yaml}"
    );
    let _: SequenceRule = serde_json::from_value(documents[0].clone())?;
    // --apply-dry-run: accepted by the API server, and nothing is stored.
    let dry = plugin.ok(&["suggest", "shop", "--apply-dry-run"])?;
    assert!(
        dry.contains(
            "sequencerule.ordo.dev/require-get-cart-before-post-checkout created (server dry run)"
        ),
        "{dry}"
    );
    let stored: Api<SequenceRule> = Api::namespaced(client.clone(), &namespace);
    assert_eq!(stored.list(&ListParams::default()).await?.items.len(), 4);
    // A suggestion the CRD's CEL rules refuse: exit 1, the rule and the reason named.
    let err = plugin.fails(&["suggest", "broken", "--apply-dry-run"])?;
    assert!(err.contains("too-short-window"), "{err}");
    let output = plugin.run(&["suggest", "broken", "--apply-dry-run"])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("within.requests"),
        "the server's reason: {stdout}"
    );

    // Graph as DOT: every operation a node, learned and declared edges.
    let dot = plugin.ok(&["graph", "shop", "-o", "dot"])?;
    assert!(
        dot.starts_with(&format!("digraph \"{namespace}/shop\"")),
        "{dot}"
    );
    for op in [
        PRODUCTS, PRODUCT, ADD, CART, CHECKOUT, PAY, ORDER, LOGIN, EXPORT,
    ] {
        assert!(
            dot.contains(&format!("label=\"{op}\\n")),
            "no node {op}:\n{dot}"
        );
    }
    let learned = dot
        .lines()
        .filter(|l| l.contains("->") && !l.contains("dashed"))
        .count();
    assert_eq!(learned, 8, "8 distinct learned transitions:\n{dot}");
    assert!(dot.contains("requires (payment-after-checkout)"), "{dot}");
    assert!(dot.contains("forbids (no-login-after-payment)"), "{dot}");
    assert!(dot.contains("≥ 2s (human-checkout)"), "{dot}");
    assert!(dot.contains("max 5 in a row (no-order-scraping)"), "{dot}");
    // Nodes carry their posture.
    assert!(
        dot.contains(&format!(
            "label=\"{LOGIN}\\n1,200 requests\\nno credentials · token\""
        )),
        "{dot}"
    );
    assert!(
        dot.contains(&format!("label=\"{ORDER}\\n600 requests\\nemail, phone\\n")),
        "{dot}"
    );
    Ok(())
}

#[tokio::test]
async fn errors_exit_1_with_a_message_naming_what_is_missing() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("kubectl-ordo-errors").await?;
    populate(&client, &namespace).await?;
    let plugin = Plugin::new(cluster, &namespace)?;
    for command in [
        vec!["status", "nope"],
        vec!["incidents", "nope"],
        vec!["suggest", "nope"],
        vec!["graph", "nope"],
        vec!["report", "nope"],
    ] {
        let err = plugin.fails(&command)?;
        assert!(
            err.contains(&format!(
                "apiprotections.ordo.dev \"nope\" not found in namespace \"{namespace}\""
            )),
            "{command:?}: {err}"
        );
    }
    let err = plugin.fails(&["status", "shop", "--context", "no-such-context"])?;
    assert!(err.contains("no-such-context"), "{err}");
    // The kubeconfig's own context, named explicitly, works.
    let status = plugin.ok(&["status", "shop", "--context", "ordo-test"])?;
    assert!(status.contains("Protecting"), "{status}");
    let err = plugin.fails(&["graph"])?;
    assert!(err.contains("NAME"), "usage error: {err}");
    let err = plugin.fails(&["status", "--kubeconfig", "/nonexistent/kubeconfig"])?;
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    Ok(())
}

/// Runs headless Chromium on `file` twice: a screenshot of `width`×`height` and a dump of
/// the DOM after parsing.
async fn chromium(file: &Path, width: u32, height: u32) -> Result<(PathBuf, String)> {
    let dir = file.parent().context("a directory")?;
    let url = format!("file://{}", file.display());
    let screenshot = file.with_extension("png");
    let common = |profile: &str| {
        let mut command = tokio::process::Command::new("chromium");
        command
            // Root in a container has no user namespace sandbox.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", dir.join(profile).display()))
            .kill_on_drop(true);
        command
    };
    let mut shot = common("profile-shot");
    shot.arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url);
    let output = tokio::time::timeout(Duration::from_secs(120), shot.output())
        .await
        .context("chromium --screenshot took more than 120 s")?
        .context("running chromium (Debian package `chromium`; .ci/run installs it)")?;
    if !output.status.success() || !screenshot.exists() {
        bail!(
            "chromium --screenshot failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut dump = common("profile-dom");
    dump.arg("--dump-dom").arg(&url);
    let output = tokio::time::timeout(Duration::from_secs(120), dump.output())
        .await
        .context("chromium --dump-dom took more than 120 s")??;
    if !output.status.success() {
        bail!(
            "chromium --dump-dom failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((screenshot, String::from_utf8(output.stdout)?))
}

/// Pixels of the PNG within a small distance of each colour.
fn count_colours(png_path: &Path, colours: &[[u8; 3]]) -> Result<Vec<usize>> {
    let mut decoder = png::Decoder::new(std::fs::File::open(png_path)?);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer)?;
    let channels = info.color_type.samples();
    if channels < 3 {
        bail!("unexpected PNG colour type {:?}", info.color_type);
    }
    let mut counts = vec![0; colours.len()];
    for pixel in buffer[..info.buffer_size()].chunks_exact(channels) {
        for (i, colour) in colours.iter().enumerate() {
            if (0..3).all(|c| pixel[c].abs_diff(colour[c]) <= 6) {
                counts[i] += 1;
            }
        }
    }
    Ok(counts)
}

fn hex(colour: &str) -> [u8; 3] {
    let value = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap_or(0);
    [(value >> 16) as u8, (value >> 8) as u8, value as u8]
}

/// Copies the pages and screenshots to `$ORDO_KUBECTL_ORDO_OUT` when set, to look at them.
fn keep(dir: &Path) -> Result<()> {
    let Some(out) = std::env::var_os("ORDO_KUBECTL_ORDO_OUT") else {
        return Ok(());
    };
    std::fs::create_dir_all(&out)?;
    for name in ["graph.svg", "graph.png", "report.html", "report.png"] {
        std::fs::copy(dir.join(name), Path::new(&out).join(name))?;
    }
    Ok(())
}

const NODE_FILL: &str = "#dbeafe";
const IMPORTANT_FILL: &str = "#fed7aa";
const CRITICAL_BADGE: &str = "#7f1d1d";

#[tokio::test]
async fn report_and_graph_render_in_headless_chromium() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("kubectl-ordo-browser").await?;
    populate(&client, &namespace).await?;
    let plugin = Plugin::new(cluster, &namespace)?;
    let dir = tempfile::tempdir()?;

    // The SVG on its own.
    let svg = plugin.ok(&["graph", "shop", "-o", "svg"])?;
    let svg_path = dir.path().join("graph.svg");
    std::fs::write(&svg_path, &svg)?;
    let (shot, dom) = chromium(&svg_path, 1600, 1200).await?;
    assert!(
        !dom.contains("This page contains the following errors"),
        "the SVG does not parse:\n{dom}"
    );
    for op in [
        PRODUCTS, PRODUCT, ADD, CART, CHECKOUT, PAY, ORDER, LOGIN, EXPORT,
    ] {
        assert!(
            dom.contains(&format!("data-operation=\"{op}\"")),
            "no node {op} in the DOM"
        );
    }
    assert!(
        dom.contains("class=\"edge learned important\""),
        "no highlighted sequence"
    );
    assert!(dom.contains("class=\"edge requires\""), "no declared rule");
    let counts = count_colours(&shot, &[hex(NODE_FILL), hex(IMPORTANT_FILL)])?;
    assert!(
        counts[0] > 2_000,
        "plain nodes not rendered: {counts:?} pixels"
    );
    assert!(
        counts[1] > 2_000,
        "highlighted nodes not rendered: {counts:?} pixels"
    );

    // The report: self-contained, with the incidents, endpoints, graph and suggestions.
    let html = plugin.ok(&["report", "shop"])?;
    for forbidden in ["http://", "https://", "<script", "<link"] {
        let allowed = html.matches("http://www.w3.org/2000/svg").count();
        let found = html.matches(forbidden).count();
        assert!(
            found == 0 || (forbidden == "http://" && found == allowed),
            "the report refers to {forbidden} ({found} times): it must open without network access"
        );
    }
    let html_path = dir.path().join("report.html");
    std::fs::write(&html_path, &html)?;
    let (shot, dom) = chromium(&html_path, 1400, 4000).await?;
    for id in ["inc-crit-1", "inc-high-2", "inc-med-3", "inc-low-4"] {
        assert!(
            dom.contains(&format!("class=\"incident\" data-id=\"{id}\"")),
            "incident {id} not in the DOM"
        );
    }
    assert!(
        dom.contains(CRITICAL_SUMMARY),
        "the critical summary is not in the DOM"
    );
    assert_eq!(
        dom.matches("<tr class=\"endpoint\">").count(),
        9,
        "endpoints"
    );
    assert_eq!(
        dom.matches("<tr class=\"posture-row\">").count(),
        3,
        "the posture's operations"
    );
    assert!(
        dom.contains("<svg") && dom.contains(&format!("data-operation=\"{CHECKOUT}\"")),
        "no graph"
    );
    assert!(
        dom.contains("require-get-cart-before-post-checkout"),
        "no suggested rule"
    );
    keep(dir.path())?;
    let counts = count_colours(
        &shot,
        &[hex(NODE_FILL), hex(IMPORTANT_FILL), hex(CRITICAL_BADGE)],
    )?;
    assert!(
        counts[0] > 2_000 && counts[1] > 2_000,
        "the graph did not render in the report: {counts:?}"
    );
    assert!(
        counts[2] > 100,
        "the Critical severity badge did not render: {counts:?}"
    );
    Ok(())
}

/// `plugin/krew/release`: the archive is named as the manifest says, and the manifest's
/// digest is the archive's.
#[test]
fn krew_manifest_names_the_archives_with_their_digests() -> Result<()> {
    use sha2::Digest as _;
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("kubectl-ordo");
    std::fs::write(&binary, "#!/bin/sh\necho ordo\n")?;
    let mut permissions = std::fs::metadata(&binary)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&binary, permissions)?;
    let script = ordo_tests::cluster::workspace_root().join("plugin/krew/release");
    let out = dir.path().join("dist");
    let archive = std::process::Command::new(&script)
        .arg("archive")
        .arg(&binary)
        .args(["linux", "arm64"])
        .arg(&out)
        .output()?;
    assert!(
        archive.status.success(),
        "{}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let path = PathBuf::from(String::from_utf8(archive.stdout)?.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(format!("kubectl-ordo-v{version}-linux-arm64.tar.gz").as_str())
    );
    let manifest = std::process::Command::new(&script)
        .arg("manifest")
        .arg(&out)
        .output()?;
    assert!(
        manifest.status.success(),
        "{}",
        String::from_utf8_lossy(&manifest.stderr)
    );
    let manifest: Value = serde_yaml_ng::from_slice(&manifest.stdout)?;
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "ordo");
    assert_eq!(manifest["spec"]["version"], format!("v{version}"));
    let platforms = manifest["spec"]["platforms"]
        .as_array()
        .context("platforms")?;
    assert_eq!(platforms.len(), 1, "only the platform that has an archive");
    let platform = &platforms[0];
    assert_eq!(platform["selector"]["matchLabels"]["os"], "linux");
    assert_eq!(platform["selector"]["matchLabels"]["arch"], "arm64");
    assert_eq!(platform["bin"], "kubectl-ordo");
    let digest = sha2::Sha256::digest(std::fs::read(&path)?);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(platform["sha256"], hex.as_str());
    assert!(
        platform["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!(
                "/v{version}/kubectl-ordo-v{version}-linux-arm64.tar.gz"
            ))),
        "{platform}"
    );
    // No archive, no manifest.
    let empty = std::process::Command::new(&script)
        .arg("manifest")
        .arg(dir.path().join("nothing"))
        .output()?;
    assert!(!empty.status.success());
    Ok(())
}

/// A kubeconfig for ServiceAccount `name` of `namespace`, allowed `verbs` on `resources` of
/// ordo.dev in that namespace only (a Role and its RoleBinding), authenticated with a token
/// from the TokenRequest API.
async fn restricted_kubeconfig(
    cluster: &TestCluster,
    client: &Client,
    namespace: &str,
    name: &str,
    rules: Value,
    dir: &Path,
) -> Result<PathBuf> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": name } }))?,
        )
        .await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": name }, "rules": rules }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": name },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
                "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": namespace }],
            }))?,
        )
        .await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("a TokenRequest answer without a token")?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": {
            "server": cluster.server(),
            "certificate-authority": cluster.ca_cert_path(),
        }}],
        "users": [{ "name": name, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": "test", "user": name, "namespace": namespace } }],
        "current-context": name,
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(path)
}

/// The plugin reads with the user's own RBAC: what the user may not read is refused with the
/// API server's reason (exit 1), or left out with a warning when it is only the rules.
#[tokio::test]
async fn reads_with_the_users_rbac() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("kubectl-ordo-rbac").await?;
    populate(&client, &namespace).await?;
    let plugin = Plugin::new(cluster, &namespace)?;
    let dir = tempfile::tempdir()?;
    let protections_only = restricted_kubeconfig(
        cluster,
        &client,
        &namespace,
        "protections-only",
        json!([{ "apiGroups": ["ordo.dev"], "resources": ["apiprotections"], "verbs": ["get", "list"] }]),
        dir.path(),
    )
    .await?;
    let nothing = restricted_kubeconfig(
        cluster,
        &client,
        &namespace,
        "nothing",
        json!([{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }]),
        dir.path(),
    )
    .await?;
    let as_user = |kubeconfig: &Path, args: &[&str]| -> Result<Output> {
        let mut all: Vec<&str> = args.to_vec();
        let path = kubeconfig.to_str().context("a UTF-8 path")?;
        all.extend(["--kubeconfig", path]);
        plugin.run(&all)
    };

    // ApiProtections readable, SequenceRules not: the status says so, the graph warns.
    let output = as_user(&protections_only, &["status", "shop"])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("declared rules not readable"), "{stdout}");
    assert!(stdout.contains("sequencerules"), "{stdout}");
    let output = as_user(&protections_only, &["graph", "shop", "-o", "dot"])?;
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: declared SequenceRules left out") && stderr.contains("forbidden"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("dashed"),
        "no rules drawn"
    );
    // Creating SequenceRules (even as a dry run) is not granted.
    let output = as_user(&protections_only, &["suggest", "shop", "--apply-dry-run"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // Nothing readable: exit 1 with the server's reason, naming the user and the resource.
    let output = as_user(&nothing, &["status", "shop"])?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(
        stderr.contains("system:serviceaccount:") && stderr.contains("apiprotections"),
        "{stderr}"
    );
    Ok(())
}
