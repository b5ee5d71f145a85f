//! The shape of the source tree, checked: imports run one way, only the storage layer knows which
//! database it talks to, and no file grows past what one reader holds in mind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every source file under `src/`, by module path (`crediting::apply`), with its text before its
/// unit tests.
fn modules() -> BTreeMap<String, (PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
            {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            (parts.join("::"), (path, text))
        })
        .collect()
}

/// The code of a file without its comments.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d}}` as `a::b`, `a::c::d`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_owned()];
    };
    let (head, body) = (&path[..open], &path[open + 1..path.len() - 1]);
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    items.push(current);
    items
        .iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(|item| expand(item.trim()))
        .map(|tail| format!("{head}{tail}"))
        .collect()
}

/// The source files each file imports from (`use`, or a `crate::`/`super::` path in its code).
fn imports(modules: &BTreeMap<String, (PathBuf, String)>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &[&str]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|k| path[..k].join("::"))
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut edges = BTreeMap::new();
    for (name, (_, text)) in modules {
        let here: Vec<&str> = name.split("::").filter(|p| !p.is_empty()).collect();
        let code = code(text);
        let mut paths = Vec::new();
        for statement in code.split(';') {
            if let Some(at) = statement.find("use ") {
                let before = &statement[..at];
                if before.trim().is_empty() || before.trim_end().ends_with("pub") {
                    let path: String = statement[at + 4..].split_whitespace().collect();
                    paths.extend(expand(&path));
                }
            }
        }
        // A path that starts with a child module's name, anywhere in the code.
        for (child, _) in modules.range(format!("{name}::")..) {
            let Some(short) = child
                .strip_prefix(&format!("{name}::"))
                .or_else(|| name.is_empty().then_some(child.as_str()))
            else {
                break;
            };
            if short.contains("::") {
                continue;
            }
            let needle = format!("{short}::");
            let starts_a_path = code.match_indices(&needle).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if starts_a_path {
                paths.push(format!("self::{short}"));
            }
        }
        for prefix in ["crate::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let tail: String = code[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push(tail);
            }
        }
        let mut targets = BTreeSet::new();
        for path in paths {
            let path = path.split(" as ").next().unwrap_or_default();
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            let full: Vec<&str> = match parts.first() {
                Some(&"crate") => parts[1..].to_vec(),
                Some(&"super") => here[..here.len().saturating_sub(1)]
                    .iter()
                    .chain(&parts[1..])
                    .copied()
                    .collect(),
                Some(&"self") => here.iter().chain(&parts[1..]).copied().collect(),
                Some(first)
                    if modules.contains_key(&[&here[..], &[*first]].concat().join("::")) =>
                {
                    here.iter().chain(&parts).copied().collect()
                }
                _ => continue,
            };
            if let Some(target) = resolve(&full).filter(|t| t != name && !t.is_empty()) {
                targets.insert(target);
            }
        }
        edges.insert(name.clone(), targets);
    }
    edges
}

/// A circle of imports through `from`, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in &edges[&at] {
            if next == from {
                return Some(path.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_source_files_import_each_other_directly_or_round_a_circle() {
    let modules = modules();
    let edges = imports(&modules);
    assert!(
        edges["crediting::apply"].contains("store"),
        "the import reader missed an import: {:?}",
        edges["crediting::apply"]
    );
    let circles: Vec<Vec<String>> = modules.keys().filter_map(|m| circle(&edges, m)).collect();
    assert!(circles.is_empty(), "circles of imports: {circles:#?}");
}

#[test]
fn only_the_storage_layer_knows_which_database_it_talks_to() {
    let backend_words = [
        "DbConnection::Postgresql",
        "DbConnection::Sqlite",
        "DatabaseUrl::Postgresql",
        "DatabaseUrl::Sqlite",
        "PgConnection",
        "SqliteConnection",
    ];
    let mut outside = Vec::new();
    for (name, (path, text)) in modules() {
        if name == "db"
            || name.starts_with("db::")
            || name == "store"
            || name.starts_with("store::")
        {
            continue;
        }
        let code = code(&text);
        for word in backend_words.iter().filter(|w| code.contains(**w)) {
            outside.push(format!("{}: {word}", path.display()));
        }
    }
    assert!(
        outside.is_empty(),
        "backend matches outside db/ and store/: {outside:#?}"
    );
}

#[test]
fn no_source_file_holds_more_than_about_700_lines_before_its_tests() {
    let long: Vec<String> = modules()
        .into_values()
        .filter(|(_, text)| text.lines().count() > 720)
        .map(|(path, text)| format!("{}: {} lines", path.display(), text.lines().count()))
        .collect();
    assert!(long.is_empty(), "files too long to read: {long:#?}");
}
