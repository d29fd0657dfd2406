//! The code's shape stays what issue 14 made it: dependencies between modules point one way.
//! `scripts/modgraph.py` draws the module graph from `crate::` and `super::` paths (test modules
//! left out) and lists every cycle; there must be none.

use std::path::Path;
use std::process::Command;

#[test]
fn the_module_graph_has_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("scripts/modgraph.py"))
        .arg(root.join("src"))
        .output()
        .expect("python3 runs scripts/modgraph.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    let modules: usize = report
        .split("modules: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("the report counts modules");
    // A graph of nothing would have no cycles either.
    assert!(modules > 40, "{report}");
    assert!(report.contains(", cycles: 0\n"), "{report}");
}
