//! The architecture as a test: no import circle among the files of `src/`
//! or among its top-level modules, and `src/lib.rs` lists the top-level
//! modules in an order in which each uses only those before it (the layers
//! the README's Development section describes).
//!
//! An edge is a `crate::a::b` or `super::x` path in code (comments are not
//! code), or a parent naming one of its child modules (`child::x`); a
//! module's `mod` declaration alone is not a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`proxy::inspect`) to its file, for every file under src/.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "lib" || name == "main" {
                continue;
            }
            out.insert(name, p);
        }
    }
    out
}

/// The code of a file without its comments (line comments, doc comments
/// and block comments; string literals are kept, which is harmless here).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = 0usize;
    for line in text.lines() {
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_block > 0 {
                match rest.find("*/") {
                    Some(i) => {
                        in_block -= 1;
                        rest = &rest[i + 2..];
                    }
                    None => break,
                }
            } else {
                let (line_c, block_c) = (rest.find("//"), rest.find("/*"));
                match (line_c, block_c) {
                    (Some(l), b) if b.is_none_or(|b| l < b) => {
                        kept.push_str(&rest[..l]);
                        break;
                    }
                    (_, Some(b)) => {
                        kept.push_str(&rest[..b]);
                        in_block += 1;
                        rest = &rest[b + 2..];
                    }
                    (None, None) => {
                        kept.push_str(rest);
                        break;
                    }
                    (Some(_), None) => unreachable!(),
                }
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The byte ranges of the inline modules (`mod name { ... }`) of a file.
fn inline_modules(text: &str) -> Vec<std::ops::Range<usize>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut open: Vec<(usize, Option<usize>)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => {
                // Is this brace the body of `mod name`?
                let before = text[..i].trim_end();
                let name_start = before.rfind(|c: char| !is_ident(c)).map_or(0, |p| p + 1);
                let is_mod = before[..name_start].trim_end().ends_with("mod")
                    && before[..name_start].trim_end().trim_end_matches("mod").ends_with(|c: char| !is_ident(c));
                open.push((i, is_mod.then_some(i)));
            }
            b'}' => {
                if let Some((_, Some(start))) = open.pop() {
                    out.push(start..i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `a::b::c` path that starts at byte `at` of `s`.
fn path_at(s: &str, at: usize) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = &s[at..];
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    segs
}

/// The longest known module that `segs` (relative to the crate) starts with.
fn resolve(mods: &BTreeMap<String, PathBuf>, segs: &[String]) -> Option<String> {
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| mods.contains_key(m))
}

/// Which modules each module uses.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, path) in mods {
        let text = code(&std::fs::read_to_string(path).unwrap());
        let me: Vec<String> = name.split("::").map(String::from).collect();
        let is_mod_rs = path.file_name().is_some_and(|f| f == "mod.rs");
        let mut uses = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            if i > 0 && text[..i].ends_with(|c: char| is_ident(c) || c == ':') {
                continue;
            }
            if let Some(m) = resolve(mods, &path_at(&text, i + "crate::".len())) {
                uses.insert(m);
            }
        }
        let inline = inline_modules(&text);
        for (i, _) in text.match_indices("super::") {
            if i > 0 && text[..i].ends_with(|c: char| is_ident(c) || c == ':') {
                continue;
            }
            // `super` of an inline module (`mod tests { use super::*; }`)
            // is this file; each further `super::` goes up one more.
            let mut ups = 1;
            let mut at = i + "super::".len();
            while text[at..].starts_with("super::") {
                ups += 1;
                at += "super::".len();
            }
            let depth = inline.iter().filter(|r| r.contains(&i)).count();
            if ups <= depth {
                continue;
            }
            let mut base = me.clone();
            for _ in 0..ups - depth {
                base.pop();
            }
            let rel = path_at(&text, at);
            let mut full = base.clone();
            full.extend(rel);
            // `super::x` names an item of the parent when x is no module.
            match resolve(mods, &full) {
                Some(m) if m.split("::").count() > base.len() => uses.insert(m),
                _ if !base.is_empty() => uses.insert(base.join("::")),
                _ => false,
            };
        }
        // A parent naming its children: `child::x` or `use child::...`.
        if is_mod_rs {
            let prefix = format!("{name}::");
            for child in mods.keys().filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains("::")) {
                let short = &child[prefix.len()..];
                let named = text
                    .match_indices(&format!("{short}::"))
                    .any(|(i, _)| i == 0 || !text[..i].ends_with(|c: char| is_ident(c) || c == ':'));
                if named {
                    uses.insert(child.clone());
                }
            }
        }
        uses.remove(name);
        out.insert(name.clone(), uses);
    }
    out
}

/// A cycle in the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == m).unwrap();
                    let mut cycle = path[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mods = modules(&src());
    assert!(mods.contains_key("proxy::inspect") && mods.contains_key("decide"), "{:?}", mods.keys());
    let graph = edges(&mods);
    // The parser finds what it must (a check that it can see an edge).
    assert!(graph["proxy"].contains("proxy::inspect"), "{:?}", graph["proxy"]);
    assert!(graph["decide"].contains("tokens::table"), "{:?}", graph["decide"]);
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import circle among files: {}", cycle.join(" -> "));
    }
}

#[test]
fn top_level_modules_form_the_layers_lib_rs_lists() {
    let mods = modules(&src());
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in edges(&mods) {
        let entry = graph.entry(top(&from)).or_default();
        entry.extend(tos.iter().map(|t| top(t)).filter(|t| *t != top(&from)));
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import circle among top-level modules: {}", cycle.join(" -> "));
    }
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let order: Vec<String> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';').to_string()).collect();
    assert_eq!(
        order.iter().collect::<BTreeSet<_>>(),
        graph.keys().collect::<BTreeSet<_>>(),
        "lib.rs lists every module"
    );
    for (i, m) in order.iter().enumerate() {
        for used in &graph[m] {
            let at = order.iter().position(|o| o == used).unwrap();
            assert!(at < i, "`{m}` uses `{used}`, which lib.rs lists after it: the layers are out of order");
        }
    }
}

#[test]
fn the_checker_finds_a_circle_when_there_is_one() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(code("let a = 1; // crate::x\n/* crate::y */ b"), "let a = 1; \n b\n");
}
