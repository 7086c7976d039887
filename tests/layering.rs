//! Layering check (issue 13, "a check that keeps it so").
//!
//! Reads every `.rs` file under `src/` with a small lexer of its own (no
//! `syn`), builds the graph of references between the crate's top-level
//! modules and fails on
//!
//! 1. any import cycle: a strongly connected component of more than one
//!    top-level module, reported with every edge inside it and the
//!    `file:line` (first occurrence per file) that makes it;
//! 2. any `crate::config` reference from a module other than `config` itself
//!    and the top-level consumers (`daemon`, `demo`, `bench`, `cli` and the
//!    binary, `main.rs`), reported with every `file:line`.
//!
//! The intended layering: data flows
//! `ingest → store → features → learn → onnx → serve → monitor`; a module may
//! import lower layers (anything may import `store`, `stats`), never both ways
//! between two top-level modules. `config` composes above the stages (it may
//! import the stages' own config types; no stage imports `config`), and
//! `daemon` wires everything at the top, with `main.rs`, `demo`, `bench` and
//! `cli` as the other top-level consumers.
//!
//! What counts as a reference to top-level module `X`:
//! - `crate::X…` and `$crate::X…` anywhere (use statements, paths in code,
//!   grouped uses `use crate::{a, b::c}` across lines, each group item with its
//!   own line);
//! - `super::…::X` whose `super`s climb out of the file's top-level module to
//!   the crate root (reported like any other edge; the evidence shows the
//!   `super::` path);
//! - `edgeloop::X` / `::edgeloop::X` in the binary (`src/main.rs` and the
//!   modules it declares).
//!
//! Comments (line, doc, nested block), string literals (plain, byte, C, raw
//! with any number of `#`) and char literals are skipped, so a `crate::config`
//! in a doc comment or a message does not count.
//!
//! **`#[cfg(test)]` items are excluded**: unit tests inside a stage may
//! legitimately build a whole `Config` (e.g. `crate::config::Config::
//! load_with_env` in `serve::registry`'s tests). The item following a
//! `#[cfg(test)]` attribute (usually `mod tests { … }`, also a `use`, `fn`,
//! …) is skipped with bracket matching, and a file declared by
//! `#[cfg(test)] mod name;` is skipped entirely. `#[cfg(any(test, …))]` and
//! the like are *not* skipped: they are compiled outside tests too.
//!
//! The real check is `src_has_no_import_cycle_and_no_stage_imports_config`;
//! the other tests exercise the lexer, the reference finder and the graph on
//! small inline sources, so the check is shown to fail when it should.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Top-level modules allowed to import `config` besides `config` itself: the
/// consumers at the top: `daemon` (wiring), `http` (the API over every
/// stage, wired by the daemon), the commands (`demo`, `bench`, `cli`), and
/// `main`, the node of the binary (`src/main.rs`).
const CONFIG_CONSUMERS: &[&str] = &["config", "daemon", "http", "demo", "bench", "cli", "main"];

/// Node name of the binary crate (`src/main.rs`, the modules it declares and
/// `src/bin/*`).
const BIN_NODE: &str = "main";

/// The library's name, as the binary spells it in paths.
const LIB_NAME: &str = "edgeloop";

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
    ident: bool,
}

impl Token {
    fn is(&self, s: &str) -> bool {
        self.text == s
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Splits Rust source into identifiers (keywords included), `::` and
/// single-character punctuation, each with its 1-based line. Comments,
/// string/char literals and numbers produce no tokens; lifetimes and labels
/// produce their identifier only.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let at = |i: usize| -> char {
        if i < n {
            c[i]
        } else {
            '\0'
        }
    };
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut i = 0usize;

    // Skips a "…" string whose opening quote is at `i`; returns the index after it.
    let skip_quoted = |mut i: usize, line: &mut usize| -> usize {
        i += 1;
        while i < n {
            match c[i] {
                '\\' => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 2;
                }
                '"' => return i + 1,
                '\n' => {
                    *line += 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        n
    };
    // Skips a raw string: `i` at the first `#` or `"` after the `r`.
    let skip_raw = |mut i: usize, line: &mut usize| -> usize {
        let mut hashes = 0;
        while at(i) == '#' {
            hashes += 1;
            i += 1;
        }
        debug_assert_eq!(at(i), '"');
        i += 1;
        while i < n {
            if c[i] == '\n' {
                *line += 1;
            }
            if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                return i + 1 + hashes;
            }
            i += 1;
        }
        n
    };
    // At a `'`: a char literal (returns the index after it) or a lifetime /
    // label (returns the index after the quote, the identifier follows).
    let skip_char_or_lifetime = |i: usize| -> usize {
        if at(i + 1) == '\\' {
            let mut j = i + 3; // past the escaped character
            while j < n && c[j] != '\'' && c[j] != '\n' {
                j += 1;
            }
            j + 1
        } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
            i + 3
        } else {
            i + 1
        }
    };

    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 1;
            i += 2;
            while i < n && depth > 0 {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_quoted(i, &mut line);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(i);
        } else if is_ident_start(ch) {
            let start = i;
            while i < n && is_ident_continue(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = at(i);
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            if raw_prefix && (next == '"' || next == '#') {
                let mut j = i;
                while at(j) == '#' {
                    j += 1;
                }
                if at(j) == '"' {
                    i = skip_raw(i, &mut line);
                    continue;
                }
                if word == "r" && next == '#' && is_ident_start(at(i + 1)) {
                    // Raw identifier r#name.
                    let s = i + 1;
                    i = s;
                    while i < n && is_ident_continue(c[i]) {
                        i += 1;
                    }
                    out.push(Token {
                        text: c[s..i].iter().collect(),
                        line,
                        ident: true,
                    });
                    continue;
                }
            }
            if matches!(word.as_str(), "b" | "c") && next == '"' {
                i = skip_quoted(i, &mut line);
                continue;
            }
            if word == "b" && next == '\'' {
                i = skip_char_or_lifetime(i);
                continue;
            }
            out.push(Token {
                text: word,
                line,
                ident: true,
            });
        } else if ch.is_ascii_digit() {
            // Numbers (1u8, 0x1f, 1e3): no tokens; `.` and `-` are punctuation.
            while i < n && is_ident_continue(c[i]) {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                text: "::".into(),
                line,
                ident: false,
            });
            i += 2;
        } else {
            out.push(Token {
                text: ch.to_string(),
                line,
                ident: false,
            });
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// References in one file
// ---------------------------------------------------------------------------

/// A reference from a file to a top-level module.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ref {
    target: String,
    line: usize,
    /// The path as written, e.g. `crate::learn::model::{Family, Task}`.
    text: String,
}

#[derive(Debug, Default)]
struct Scan {
    refs: Vec<Ref>,
    /// `#[cfg(test)] mod name;` at file level: out-of-line test-only modules.
    test_only_mods: Vec<String>,
    /// The file is `#![cfg(test)]` as a whole.
    test_only_file: bool,
}

/// How paths in a file reach the library's root.
#[derive(Clone, Copy, Debug)]
struct FileKind {
    /// Module depth of the file in the library (src/a.rs, src/a/mod.rs: 1;
    /// src/a/b.rs: 2); `None` for the binary's files, where neither `crate::`
    /// nor `super::` reach the library.
    lib_depth: Option<usize>,
}

fn matching_close(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i64;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// Index after the item starting at `i` (after its attributes were skipped):
/// the first `;` outside brackets, or the `}` closing the item's first
/// top-level brace block.
fn item_end(toks: &[Token], mut i: usize) -> usize {
    let mut depth = 0i64;
    while i < toks.len() {
        match toks[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth -= 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
                if depth < 0 {
                    return i; // ran into the enclosing block's end
                }
            }
            ";" if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    toks.len()
}

fn is_cfg_test_attr(toks: &[Token], i: usize, inner: bool) -> Option<usize> {
    let pat: &[&str] = if inner {
        &["#", "!", "[", "cfg", "(", "test", ")", "]"]
    } else {
        &["#", "[", "cfg", "(", "test", ")", "]"]
    };
    if toks.len() >= i + pat.len() && pat.iter().enumerate().all(|(k, p)| toks[i + k].is(p)) {
        Some(i + pat.len())
    } else {
        None
    }
}

fn render(toks: &[Token]) -> String {
    let mut s = String::new();
    let mut prev: Option<&Token> = None;
    for t in toks {
        if let Some(p) = prev {
            if (p.ident && t.ident) || (p.is(",") && !t.is("}")) {
                s.push(' ');
            }
        }
        s.push_str(&t.text);
        prev = Some(t);
    }
    s
}

/// End (exclusive) of the path whose first segment is at `j`: segments joined
/// by `::`, ending in an identifier, `*` or one `{…}` group.
fn path_end(toks: &[Token], j: usize) -> usize {
    let mut k = j + 1;
    while k + 1 < toks.len() && toks[k].is("::") {
        let next = &toks[k + 1];
        if next.ident {
            k += 2;
        } else if next.is("*") {
            return k + 2;
        } else if next.is("{") {
            return matching_close(toks, k + 1) + 1;
        } else {
            break; // turbofish `::<` and the like
        }
    }
    k
}

/// Records the top-level modules named right after a root prefix: `j` is the
/// first token after `crate::` (an identifier or a `{` group).
fn root_relative(
    toks: &[Token],
    j: usize,
    prefix: &str,
    modules: &BTreeSet<String>,
    refs: &mut Vec<Ref>,
) {
    let Some(t) = toks.get(j) else { return };
    let mut add = |first: usize, end: usize| {
        let name = &toks[first].text;
        if toks[first].ident && modules.contains(name) {
            refs.push(Ref {
                target: name.clone(),
                line: toks[first].line,
                text: format!("{prefix}{}", render(&toks[first..end])),
            });
        }
    };
    if t.ident {
        add(j, path_end(toks, j));
    } else if t.is("{") {
        let close = matching_close(toks, j);
        let mut start = j + 1;
        let mut depth = 0i64;
        for (k, tok) in toks.iter().enumerate().take(close + 1).skip(j + 1) {
            let tx = tok.text.as_str();
            let at_item_end = (k == close) || (depth == 0 && tx == ",");
            if at_item_end {
                if start < k {
                    add(start, k);
                }
                start = k + 1;
                continue;
            }
            match tx {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => depth -= 1,
                _ => {}
            }
        }
    }
}

/// Finds the references to the library's top-level `modules` in one file.
fn scan(src: &str, kind: FileKind, modules: &BTreeSet<String>) -> Scan {
    let toks = lex(src);
    let mut out = Scan::default();
    // One entry per open brace: true when it opens an inline `mod name { … }`.
    let mut stack: Vec<bool> = Vec::new();
    let mut pending_mod = false;
    let mut i = 0usize;
    while i < toks.len() {
        let t = &toks[i];
        let prev_is_path_sep = i > 0 && toks[i - 1].is("::");

        if t.is("#") {
            if let Some(after) = is_cfg_test_attr(&toks, i, true) {
                if stack.is_empty() {
                    out.test_only_file = true;
                    out.refs.clear();
                    return out;
                }
                // Rest of the enclosing block is test-only.
                let mut depth = 0i64;
                let mut k = after;
                while k < toks.len() {
                    match toks[k].text.as_str() {
                        "(" | "[" | "{" => depth += 1,
                        ")" | "]" | "}" => {
                            if depth == 0 {
                                break;
                            }
                            depth -= 1;
                        }
                        _ => {}
                    }
                    k += 1;
                }
                i = k;
                continue;
            }
            if let Some(mut k) = is_cfg_test_attr(&toks, i, false) {
                // Further attributes of the same item.
                while k + 1 < toks.len() && toks[k].is("#") && toks[k + 1].is("[") {
                    k = matching_close(&toks, k + 1) + 1;
                }
                if stack.is_empty()
                    && k + 2 < toks.len()
                    && toks[k].is("mod")
                    && toks[k + 1].ident
                    && toks[k + 2].is(";")
                {
                    out.test_only_mods.push(toks[k + 1].text.clone());
                }
                i = item_end(&toks, k);
                continue;
            }
        }

        match t.text.as_str() {
            "mod" if t.ident => {
                pending_mod = toks.get(i + 1).is_some_and(|n| n.ident)
                    && toks.get(i + 2).is_some_and(|n| n.is("{"));
            }
            "{" => {
                stack.push(pending_mod);
                pending_mod = false;
            }
            "}" => {
                stack.pop();
            }
            "crate"
                if kind.lib_depth.is_some()
                    && !prev_is_path_sep
                    && toks.get(i + 1).is_some_and(|n| n.is("::")) =>
            {
                let dollar = i > 0 && toks[i - 1].is("$");
                let prefix = if dollar { "$crate::" } else { "crate::" };
                root_relative(&toks, i + 2, prefix, modules, &mut out.refs);
                i += 2;
                continue;
            }
            "super" if !prev_is_path_sep => {
                if let Some(file_depth) = kind.lib_depth {
                    let mut k = i;
                    let mut count = 0;
                    while k + 1 < toks.len() && toks[k].is("super") && toks[k + 1].is("::") {
                        count += 1;
                        k += 2;
                    }
                    let depth = file_depth + stack.iter().filter(|m| **m).count();
                    if count > 0 && count == depth {
                        let prefix = "super::".repeat(count);
                        root_relative(&toks, k, &prefix, modules, &mut out.refs);
                    }
                    if count > 0 {
                        i = k;
                        continue;
                    }
                }
            }
            LIB_NAME if kind.lib_depth.is_none() => {
                let leading_sep_only = !prev_is_path_sep || i < 2 || !toks[i - 2].ident;
                if leading_sep_only && toks.get(i + 1).is_some_and(|n| n.is("::")) {
                    let prefix = format!("{LIB_NAME}::");
                    root_relative(&toks, i + 2, &prefix, modules, &mut out.refs);
                    i += 2;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// The crate: files, graph, violations
// ---------------------------------------------------------------------------

/// One source file: its path relative to the package root (`src/…`, with
/// `/`) and its text.
struct SourceFile {
    path: String,
    text: String,
}

/// Names declared by `mod name;` / `mod name { … }` at file level.
fn declared_mods(src: &str) -> Vec<String> {
    let toks = lex(src);
    let mut depth = 0i64;
    let mut names = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => depth -= 1,
            "mod" if depth == 0 && t.ident => {
                if let Some(n) = toks.get(k + 1).filter(|n| n.ident) {
                    names.push(n.text.clone());
                }
            }
            _ => {}
        }
    }
    names
}

/// Path components below `src/`, e.g. `["ingest", "mqtt.rs"]`.
fn components(path: &str) -> Vec<&str> {
    path.strip_prefix("src/")
        .unwrap_or(path)
        .split('/')
        .collect()
}

/// Directory holding a file's out-of-line child modules, as a `src/…/` prefix.
fn child_dir(path: &str) -> String {
    let stem = path.strip_suffix(".rs").unwrap_or(path);
    let dir = if let Some(d) = stem.strip_suffix("/mod") {
        d.to_string()
    } else if stem == "src/lib" || stem == "src/main" {
        "src".to_string()
    } else {
        stem.to_string()
    };
    format!("{dir}/")
}

#[derive(Clone, Debug)]
struct Evidence {
    file: String,
    line: usize,
    text: String,
}

#[derive(Debug, Default)]
struct Analysis {
    /// from → to, with the first occurrence in each file that makes the edge.
    edges: BTreeMap<(String, String), Vec<Evidence>>,
    nodes: BTreeSet<String>,
    /// Every `config` reference from a module that must not make one.
    config_imports: Vec<Evidence>,
    /// Strongly connected components of more than one module.
    cycles: Vec<Vec<String>>,
}

fn analyse(files: &[SourceFile]) -> Analysis {
    let find = |p: &str| files.iter().find(|f| f.path == p);
    let lib_mods: BTreeSet<String> = find("src/lib.rs")
        .map(|f| declared_mods(&f.text))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let bin_mods: BTreeSet<String> = find("src/main.rs")
        .map(|f| declared_mods(&f.text))
        .unwrap_or_default()
        .into_iter()
        .collect();

    // Which node each file belongs to, and how it reaches the library.
    let mut placed: Vec<(&SourceFile, String, FileKind)> = Vec::new();
    for f in files {
        let comps = components(&f.path);
        if f.path == "src/lib.rs" {
            continue; // the crate root declares the modules, it is no layer
        }
        let top = comps[0].strip_suffix(".rs").unwrap_or(comps[0]);
        if f.path == "src/main.rs" || top == "bin" || bin_mods.contains(top) {
            placed.push((f, BIN_NODE.to_string(), FileKind { lib_depth: None }));
            continue;
        }
        let depth = if comps.last() == Some(&"mod.rs") {
            comps.len() - 1
        } else {
            comps.len()
        };
        placed.push((
            f,
            top.to_string(),
            FileKind {
                lib_depth: Some(depth),
            },
        ));
    }
    // Modules a path may name: declared in lib.rs, or present as files (a
    // module being added may not be declared yet).
    let mut modules = lib_mods.clone();
    for (_, node, kind) in &placed {
        if kind.lib_depth.is_some() {
            modules.insert(node.clone());
        }
    }

    let scans: Vec<Scan> = placed
        .iter()
        .map(|(f, _, kind)| scan(&f.text, *kind, &modules))
        .collect();
    let mut test_only_prefixes: Vec<String> = Vec::new();
    if let Some(lib) = find("src/lib.rs") {
        for m in scan(&lib.text, FileKind { lib_depth: Some(0) }, &BTreeSet::new()).test_only_mods {
            test_only_prefixes.push(format!("src/{m}.rs"));
            test_only_prefixes.push(format!("src/{m}/"));
        }
    }
    for ((f, _, _), s) in placed.iter().zip(&scans) {
        for m in &s.test_only_mods {
            let dir = child_dir(&f.path);
            test_only_prefixes.push(format!("{dir}{m}.rs"));
            test_only_prefixes.push(format!("{dir}{m}/"));
        }
    }

    let mut a = Analysis::default();
    for ((f, node, _), s) in placed.iter().zip(&scans) {
        if s.test_only_file
            || test_only_prefixes
                .iter()
                .any(|p| f.path.starts_with(p.as_str()))
        {
            continue;
        }
        a.nodes.insert(node.clone());
        for r in &s.refs {
            if &r.target == node {
                continue;
            }
            a.nodes.insert(r.target.clone());
            let ev = Evidence {
                file: f.path.clone(),
                line: r.line,
                text: r.text.clone(),
            };
            if r.target == "config" && !CONFIG_CONSUMERS.contains(&node.as_str()) {
                a.config_imports.push(ev.clone());
            }
            let list = a.edges.entry((node.clone(), r.target.clone())).or_default();
            if !list.iter().any(|e| e.file == f.path) {
                list.push(ev);
            }
        }
    }
    a.config_imports
        .sort_by(|x, y| (&x.file, x.line).cmp(&(&y.file, y.line)));
    a.cycles = strongly_connected(&a.nodes, a.edges.keys())
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    a
}

/// Tarjan's algorithm; components come back sorted, each sorted by name.
fn strongly_connected<'a>(
    nodes: &BTreeSet<String>,
    edges: impl Iterator<Item = &'a (String, String)>,
) -> Vec<Vec<String>> {
    let names: Vec<&String> = nodes.iter().collect();
    let idx: BTreeMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut adj = vec![Vec::new(); names.len()];
    for (from, to) in edges {
        adj[idx[from]].push(idx[to]);
    }

    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let n = names.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    let mut comps: Vec<Vec<String>> = s
        .out
        .into_iter()
        .map(|c| {
            let mut c: Vec<String> = c.into_iter().map(|i| names[i].clone()).collect();
            c.sort();
            c
        })
        .collect();
    comps.sort();
    comps
}

/// The violations as a message; empty when there are none.
fn violations(a: &Analysis) -> String {
    let mut msg = String::new();
    for comp in &a.cycles {
        let _ = writeln!(msg, "import cycle among {{{}}}:", comp.join(", "));
        for ((from, to), evs) in &a.edges {
            if comp.contains(from) && comp.contains(to) {
                for e in evs {
                    let _ = writeln!(
                        msg,
                        "  {from} -> {to} at {}:{} ({})",
                        e.file, e.line, e.text
                    );
                }
            }
        }
    }
    for e in &a.config_imports {
        let _ = writeln!(
            msg,
            "stage imports config: {}:{} {}",
            e.file, e.line, e.text
        );
    }
    msg
}

fn read_src(root: &Path) -> Vec<SourceFile> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    paths
        .into_iter()
        .filter_map(|p| {
            // A file moved or deleted by a concurrent edit between listing and
            // reading is simply not there any more.
            let text = std::fs::read_to_string(&p).ok()?;
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            Some(SourceFile { path: rel, text })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The check on src/
// ---------------------------------------------------------------------------

#[test]
fn src_has_no_import_cycle_and_no_stage_imports_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = read_src(root);
    assert!(
        files.iter().any(|f| f.path == "src/lib.rs"),
        "no src/lib.rs under {}",
        root.display()
    );
    let a = analyse(&files);
    assert!(
        a.edges.len() > 5,
        "suspiciously few module edges found: {:?}",
        a.edges.keys()
    );
    let msg = violations(&a);
    assert!(
        msg.is_empty(),
        "layering violations in src/ ({} cycle(s), {} config import(s); #[cfg(test)] items excluded):\n{msg}",
        a.cycles.len(),
        a.config_imports.len()
    );
}

// ---------------------------------------------------------------------------
// The parser and the graph on small inline sources
// ---------------------------------------------------------------------------

fn mods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn targets(refs: &[Ref]) -> Vec<(String, usize)> {
    refs.iter().map(|r| (r.target.clone(), r.line)).collect()
}

const LIB: FileKind = FileKind { lib_depth: Some(1) };

#[test]
fn comments_strings_and_chars_do_not_count() {
    let src = r####"
//! Reads crate::config::Config.
/// Like crate::config::X.
// use crate::config::Config;
/* crate::config /* nested crate::config */ still a comment crate::config */
fn f<'a>(x: &'a str) -> &'a str {
    let _ = "crate::config::Config \" crate::config";
    let _ = r#"crate::config "quoted" crate::config"#;
    let _ = br##"crate::config "# "## ;
    let _ = b"crate::config";
    let _ = c"crate::config";
    let _ = ('"', '\'', b'"', '\u{22}');
    let _ = "line
 crate::config spanning lines";
    crate::stats::bump(x)
}
"####;
    let s = scan(src, LIB, &mods(&["config", "stats"]));
    assert_eq!(
        targets(&s.refs),
        vec![("stats".to_string(), 15)],
        "{:?}",
        s.refs
    );
    assert_eq!(s.refs[0].text, "crate::stats::bump");
}

#[test]
fn grouped_uses_across_lines_are_found_item_by_item() {
    let src = "use crate::{
    store::Store,
    features::{scaler::Scaler, windows},
    config::{
        ModelConfig, PipelineConfig,
    },
    unknown::Thing,
};
fn g(family: crate::learn::model::Family) -> bool { family.is_auto() }
macro_rules! m { () => { $crate::onnx::export() } }
";
    let s = scan(
        src,
        LIB,
        &mods(&["store", "features", "config", "learn", "onnx"]),
    );
    assert_eq!(
        targets(&s.refs),
        vec![
            ("store".into(), 2),
            ("features".into(), 3),
            ("config".into(), 4),
            ("learn".into(), 9),
            ("onnx".into(), 10)
        ]
    );
    assert_eq!(
        s.refs[2].text,
        "crate::config::{ModelConfig, PipelineConfig,}"
    );
    assert_eq!(s.refs[3].text, "crate::learn::model::Family");
    assert_eq!(s.refs[4].text, "$crate::onnx::export");
}

#[test]
fn cfg_test_items_are_skipped() {
    let src = "use crate::store::Store;
#[cfg(test)]
#[allow(unused)]
mod tests {
    use crate::config::Config;
    fn f() { let _ = \"}\"; let _ = '}'; crate::config::Config::load_with_env(); }
    mod inner { use crate::config::X; }
}
#[cfg(test)]
use crate::config::Y;
#[cfg(test)]
mod helpers;
#[cfg(not(test))]
use crate::config::Z;
#[cfg(any(test, feature = \"x\"))]
use crate::monitor::M;
";
    let s = scan(src, LIB, &mods(&["store", "config", "monitor"]));
    assert_eq!(
        targets(&s.refs),
        vec![
            ("store".into(), 1),
            ("config".into(), 14),
            ("monitor".into(), 16)
        ]
    );
    assert_eq!(s.test_only_mods, vec!["helpers".to_string()]);

    let whole = scan(
        "#![cfg(test)]\nuse crate::config::C;\n",
        LIB,
        &mods(&["config"]),
    );
    assert!(whole.test_only_file && whole.refs.is_empty());
}

#[test]
fn super_counts_only_when_it_climbs_out_of_the_top_level_module() {
    // As a file two levels down, e.g. src/learn/tune.rs (depth 2).
    let src = "use super::model::Model;
use super::super::store::Store;
pub(super) fn f() {}
mod tests {
    use super::*;
    use super::super::model::argmax;
    use super::super::super::{stats, learn::x};
}
";
    let s = scan(
        src,
        FileKind { lib_depth: Some(2) },
        &mods(&["store", "stats", "learn", "model"]),
    );
    assert_eq!(
        targets(&s.refs),
        vec![
            ("store".into(), 2),
            ("stats".into(), 7),
            ("learn".into(), 7)
        ]
    );
    assert_eq!(s.refs[0].text, "super::super::store::Store");
}

#[test]
fn the_binary_reaches_the_library_by_its_name() {
    let src = "use edgeloop::config::{Config};
mod cli;
fn main() { ::edgeloop::daemon::start(); let _ = crate::cli::run; other::edgeloop::x(); }
";
    let s = scan(
        src,
        FileKind { lib_depth: None },
        &mods(&["config", "daemon", "cli"]),
    );
    assert_eq!(
        targets(&s.refs),
        vec![("config".into(), 1), ("daemon".into(), 3)]
    );
}

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        text: text.into(),
    }
}

#[test]
fn a_fabricated_cycle_and_config_imports_are_reported() {
    let files = vec![
        file("src/lib.rs", "pub mod config; pub mod ingest; pub mod store; pub mod learn; pub mod serve; pub mod daemon; pub mod stats;"),
        file("src/main.rs", "use edgeloop::config::Config;\nfn main() {}"),
        file("src/config.rs", "use crate::learn::model::{Family, Task};\nuse crate::ingest::MqttConfig;"),
        file("src/ingest/mod.rs", "pub mod decode;\nuse crate::store::Store;"),
        file("src/ingest/decode.rs", "\n\nuse crate::config::PipelineConfig;\nfn f(x: crate::config::X) -> usize { x.len() }"),
        file("src/learn/mod.rs", "use crate::{\n  store::Store,\n  config::{ModelConfig, PipelineConfig},\n};"),
        file("src/learn/model.rs", "use super::super::serve::Registry;"),
        file("src/serve/mod.rs", "use crate::learn::Model;\n#[cfg(test)]\nmod tests { use crate::config::Config; }"),
        file("src/daemon.rs", "use crate::{config::Config, serve, ingest, store};"),
        file("src/store.rs", "use crate::stats;"),
        file("src/stats.rs", ""),
    ];
    let a = analyse(&files);
    assert_eq!(
        a.cycles,
        vec![vec![
            "config".to_string(),
            "ingest".into(),
            "learn".into(),
            "serve".into()
        ]]
    );
    let msg = violations(&a);
    let expected = "\
import cycle among {config, ingest, learn, serve}:
  config -> ingest at src/config.rs:2 (crate::ingest::MqttConfig)
  config -> learn at src/config.rs:1 (crate::learn::model::{Family, Task})
  ingest -> config at src/ingest/decode.rs:3 (crate::config::PipelineConfig)
  learn -> config at src/learn/mod.rs:3 (crate::config::{ModelConfig, PipelineConfig})
  learn -> serve at src/learn/model.rs:1 (super::super::serve::Registry)
  serve -> learn at src/serve/mod.rs:1 (crate::learn::Model)
stage imports config: src/ingest/decode.rs:3 crate::config::PipelineConfig
stage imports config: src/ingest/decode.rs:4 crate::config::X
stage imports config: src/learn/mod.rs:3 crate::config::{ModelConfig, PipelineConfig}
";
    assert_eq!(msg, expected, "\n{msg}");
    // The consumers' edges are there, and allowed.
    assert!(a
        .edges
        .contains_key(&("main".to_string(), "config".to_string())));
    assert!(a
        .edges
        .contains_key(&("daemon".to_string(), "config".to_string())));
}

#[test]
fn a_layered_graph_passes() {
    let files = vec![
        file("src/lib.rs", "pub mod config; pub mod ingest; pub mod store; pub mod daemon; mod tests_support;\n#[cfg(test)] mod fixtures;"),
        file("src/config.rs", "use crate::ingest::MqttConfig;"),
        file("src/ingest/mod.rs", "pub use crate::store::Store;\n#[cfg(test)]\nmod helpers;"),
        file("src/ingest/helpers.rs", "use crate::config::Config;"),
        file("src/ingest/helpers/deep.rs", "use crate::config::Config;"),
        file("src/fixtures.rs", "use crate::config::Config;"),
        file("src/store.rs", ""),
        file("src/daemon.rs", "use crate::{config, ingest, store};"),
    ];
    let a = analyse(&files);
    assert_eq!(violations(&a), "", "{:?}", a.edges);
    assert_eq!(a.edges.len(), 5, "{:?}", a.edges.keys());
}

#[test]
fn strongly_connected_finds_separate_cycles() {
    let nodes = mods(&["a", "b", "c", "d", "e", "f"]);
    let edges: Vec<(String, String)> = [
        ("a", "b"),
        ("b", "a"),
        ("b", "c"),
        ("c", "d"),
        ("d", "e"),
        ("e", "c"),
        ("f", "a"),
    ]
    .iter()
    .map(|(x, y)| (x.to_string(), y.to_string()))
    .collect();
    let comps: Vec<Vec<String>> = strongly_connected(&nodes, edges.iter())
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    assert_eq!(
        comps,
        vec![
            vec!["a".to_string(), "b".into()],
            vec!["c".into(), "d".into(), "e".into()]
        ]
    );
}
