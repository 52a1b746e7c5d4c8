//! Rules on the attack and model code that no compiler checks: a user's model or request must
//! never be able to make it panic (issue 31's AutoAttack failure was a `view` on a gradient
//! that fp32-fast and bf16 lay out channels-last).
//!
//! Outside `#[cfg(test)]` blocks, `core/src/attacks` and `core/src/models` may not call
//! `.view(` (a layout a request can change makes it fail: `reshape` copies where it must),
//! `.unwrap()` or `.expect(` (a libtorch result must become an error; `crate::guard` turns the
//! panicking forms of tch into errors), nor `panic!`.

use std::path::Path;

fn production_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        lines.push((number + 1, code.to_string()));
    }
    lines
}

#[test]
fn attack_and_model_code_cannot_be_made_to_panic_by_a_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for directory in ["attacks", "models"] {
        for entry in std::fs::read_dir(root.join(directory)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 15, "found {} files", files.len());
    let mut found = Vec::new();
    for path in &files {
        for (number, code) in production_lines(path) {
            for forbidden in [".view(", ".unwrap()", ".expect(", "panic!("] {
                if code.contains(forbidden) {
                    found.push(format!("{}:{number}: {forbidden} in {}", path.display(), code.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "forbidden calls:\n{}", found.join("\n"));
}

#[test]
fn the_rule_sees_what_it_forbids() {
    let sample = std::env::temp_dir().join(format!("rfb-source-rule-{}.rs", std::process::id()));
    std::fs::write(
        &sample,
        "fn f(t: &Tensor) { t.view([2, -1]); } // .unwrap() in a comment\n#[cfg(test)]\nmod tests { fn g() { x.unwrap(); } }\n",
    )
    .unwrap();
    let lines = production_lines(&sample);
    let _ = std::fs::remove_file(&sample);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].1.contains(".view(") && !lines[0].1.contains(".unwrap()"));
}
