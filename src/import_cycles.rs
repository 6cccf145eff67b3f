//! The module imports of this crate and of the trainer's harness form no cycle: a module that needs
//! another's piece takes it from a module below both (e.g. [`crate::shutdown`], [`crate::run_limits`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names as `crate::x` (or `super::x` in a submodule),
/// tests and comments left out.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let top =
                rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            if matches!(top.as_str(), "lib" | "main" | "bin") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let entry = deps.entry(top.clone()).or_default();
            for line in code.lines().map(|l| l.split("//").next().unwrap()) {
                let nested = rel.components().count() > 1;
                for prefix in ["crate::"].into_iter().chain(nested.then_some("super::")) {
                    for (i, _) in line.match_indices(prefix) {
                        let name: String =
                            line[i + prefix.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if name != top && !name.is_empty() {
                            entry.insert(name);
                        }
                    }
                }
            }
        }
    }
    let modules: BTreeSet<String> = deps.keys().cloned().collect();
    deps.values_mut().for_each(|d| d.retain(|m| modules.contains(m)));
    deps
}

/// The strongly connected components with more than one module (Tarjan), each sorted.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        for w in &t.g[v] {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let lw = t.low[w.as_str()];
                t.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if t.stack.contains(&w.as_str()) {
                let iw = t.index[w.as_str()];
                t.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let at = t.stack.iter().position(|x| *x == v).unwrap();
            let mut comp: Vec<String> = t.stack.split_off(at).into_iter().map(String::from).collect();
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], out: vec![] };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_detector_sees_a_cycle() {
    let g = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}

#[test]
fn the_server_and_the_harness_import_no_module_in_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in ["src", "trainer/src"] {
        let g = graph(&root.join(src));
        assert!(g.contains_key("shutdown") || g.contains_key("context"), "{src}: {g:?}");
        let found = cycles(&g);
        assert!(found.is_empty(), "{src}: modules importing each other: {found:?}");
    }
}
