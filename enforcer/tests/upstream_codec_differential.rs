//! The upstream HTTP/1.1 response codec against hyper's client, over the committed corpus of
//! the `upstream_diff` fuzz target (`fuzz/seeds/upstream_diff/`) and the seeds of the
//! `upstream_codec` target: the same bytes in, both accept with the same status, fields and
//! body, or both refuse. The comparison and its documented, intended differences are in
//! `fuzz/src/upstream_diff.rs`, shared with the fuzz target (`scripts/fuzz`).

#[path = "../../fuzz/src/upstream_diff.rs"]
mod upstream_diff;

use std::path::PathBuf;

use upstream_diff::{Outcome, compare, enforcer};

fn corpus(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
                .path()
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

fn method(selector: u8) -> http::Method {
    if selector & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    }
}

#[test]
fn enforcer_and_hyper_agree_on_the_committed_corpus() {
    let mut inputs = corpus("upstream_diff");
    inputs.extend(corpus("upstream_codec"));
    let (mut accepted, mut refused) = (0, 0);
    let mut differences = Vec::new();
    for (path, bytes) in &inputs {
        let Some((&selector, rest)) = bytes.split_first() else {
            continue;
        };
        let method = method(selector);
        if let Err(d) = compare(rest, &method) {
            differences.push(format!("{}: {d}", path.display()));
        }
        match enforcer(rest, &method) {
            Outcome::Accepted { .. } => accepted += 1,
            Outcome::Refused(_) => refused += 1,
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // The corpus must exercise both sides, or agreement proves little.
    assert!(accepted >= 5, "only {accepted} inputs accepted");
    assert!(refused >= 3, "only {refused} inputs refused");
}

#[test]
fn known_cases() {
    let get = http::Method::GET;
    let cases: [(&[u8], bool); 8] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", true),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            true,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            true,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", false),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false),
    ];
    for (input, accept) in cases {
        let shown = String::from_utf8_lossy(input);
        assert_eq!(
            matches!(upstream_diff::hyper(input, &get), Outcome::Accepted { .. }),
            accept,
            "hyper on {shown:?}"
        );
        assert_eq!(
            matches!(enforcer(input, &get), Outcome::Accepted { .. }),
            accept,
            "enforcer on {shown:?}"
        );
        compare(input, &get).unwrap();
    }
}
