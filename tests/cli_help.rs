//! `edgeloop --help`: every command and every option has a one-line
//! description (details in a second paragraph, for `--help`), and
//! the options every command takes are listed once, under their own heading,
//! after the command's own.

use std::process::Command;

/// Every command path (`["models", "list"]`, …) of the command line.
fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands() {
        let mut path = prefix.clone();
        path.push(sub.get_name().to_string());
        out.push(path.clone());
        paths(sub, path, out);
    }
}

/// The longest one-line description of an option, characters.
const MAX_HELP: usize = 80;

#[test]
fn every_command_and_option_has_a_one_line_description() {
    let mut cmd = edgeloop::cli::command();
    cmd.build();
    let mut missing = Vec::new();
    let mut long = Vec::new();
    let mut all = vec![(vec!["edgeloop".to_string()], cmd.clone())];
    let mut stack = vec![(vec!["edgeloop".to_string()], cmd)];
    while let Some((path, c)) = stack.pop() {
        for sub in c.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            stack.push((p.clone(), sub.clone()));
            all.push((p, sub.clone()));
        }
    }
    for (path, c) in &all {
        // A command's summary: the line `edgeloop -h` lists it by.
        let about = c.get_about().map(|h| h.to_string()).unwrap_or_default();
        if path.len() > 1
            && (about.trim().is_empty() || about.contains('\n') || about.chars().count() > MAX_HELP)
        {
            long.push(format!("{} (the command): {about}", path.join(" ")));
        }
        for arg in c.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("{} --{id}", path.join(" ")));
            }
            // `-h` shows this line; details go in a second paragraph (--help).
            if help.contains('\n') || help.chars().count() > MAX_HELP {
                long.push(format!("{} --{id}: {help}", path.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options without a description: {missing:?}"
    );
    assert!(
        long.is_empty(),
        "descriptions over one line of {MAX_HELP} characters:\n{}",
        long.join("\n")
    );
}

#[test]
fn global_options_are_listed_once_under_their_own_heading() {
    let cmd = edgeloop::cli::command();
    let mut all = Vec::new();
    paths(&cmd, vec![], &mut all);
    assert!(all.iter().any(|p| p == &["models", "list"]));
    let heading = format!("{}:", edgeloop::cli::GLOBAL_OPTIONS);
    for path in all {
        let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{path:?} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(help.matches(&heading).count(), 1, "{path:?}:\n{help}");
        let (own, global) = help.split_once(&heading).unwrap();
        for flag in ["--log-level", "--log-format"] {
            assert!(
                !own.contains(flag),
                "{path:?}: {flag} among its own options:\n{help}"
            );
            assert_eq!(global.matches(flag).count(), 1, "{path:?}:\n{help}");
        }
    }
}
