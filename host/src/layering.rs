//! The module map's one rule, checked: top-level modules depend on each other one way, never
//! in a cycle (ARCHITECTURE.md, "Who owns what"). A test reads every source file outside tests
//! and fails naming the modules of any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its (non-test) code names as `crate::x`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("the source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|c| c.trim_end_matches(".rs").to_owned())
                .unwrap_or_default();
            if matches!(top.as_str(), "lib" | "main" | "layering") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let entry = deps.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                        group.split('}').next().unwrap_or("").split(',').collect()
                    } else {
                        vec![rest]
                    };
                    for name in names {
                        let module: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !module.is_empty() && module != top {
                            entry.insert(module);
                        }
                    }
                }
            }
        }
    }
    let modules: BTreeSet<String> = deps.keys().cloned().collect();
    for targets in deps.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    deps
}

/// A cycle through `from`, if there is one: the modules along it.
fn cycle_through(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut path = vec![from.to_owned()];
    let mut seen = BTreeSet::new();
    fn walk(
        deps: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().cloned().unwrap_or_default();
        for next in deps.get(&last).into_iter().flatten() {
            if next == from {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(deps, from, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(deps, from, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let deps = dependencies(&src);
    assert!(deps.len() > 10, "the modules were found: {deps:?}");
    assert!(
        deps["server"].contains("tenancy") && deps["tenancy"].contains("store"),
        "the scan sees dependencies: {deps:?}"
    );
    for module in deps.keys() {
        if let Some(cycle) = cycle_through(&deps, module) {
            panic!("a module cycle: {} -> {module}", cycle.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found() {
    let deps: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_owned(), t.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycle_through(&deps, "a").unwrap(), ["a", "b", "c"]);
    assert!(cycle_through(&deps, "d").is_none());
}
