//! Worktree creation, libgit2 (git2) against the git CLI, on a synthetic repository.
//! Run: `cargo bench --bench git_worktree -- [files] [rounds]` (defaults: 20000 files, 5 rounds).
//! Records the median of each method; BENCHMARKS.md keeps the numbers.

mod common;

use std::time::Instant;

use common::{args, median, synthetic_repo};

fn git(dir: &std::path::Path, args: &[&str]) {
    common::git(dir, args, None);
}

fn main() {
    let (files, rounds) = args(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = synthetic_repo(dir.path(), files);

    let mut cli = Vec::new();
    let mut lib = Vec::new();
    let run_cli = |round: usize| {
        let path = dir.path().join(format!("cli-{round}"));
        let t = Instant::now();
        git(
            &repo,
            &[
                "worktree",
                "add",
                "--quiet",
                "-b",
                &format!("cli-{round}"),
                path.to_str().unwrap(),
                "main",
            ],
        );
        t.elapsed()
    };
    let run_lib = |round: usize| {
        let path = dir.path().join(format!("lib-{round}"));
        let t = Instant::now();
        let r = git2::Repository::open(&repo).unwrap();
        let head = r.head().unwrap().peel_to_commit().unwrap();
        let branch = r.branch(&format!("lib-{round}"), &head, false).unwrap();
        let mut opts = git2::WorktreeAddOptions::new();
        opts.reference(Some(branch.get()));
        r.worktree(&format!("lib-{round}"), &path, Some(&opts))
            .unwrap();
        t.elapsed()
    };
    // Alternate which method goes first, so neither always meets a cold cache.
    for round in 0..rounds {
        if round % 2 == 0 {
            cli.push(run_cli(round));
            lib.push(run_lib(round));
        } else {
            lib.push(run_lib(round));
            cli.push(run_cli(round));
        }
    }
    let (c, l) = (median(cli), median(lib));
    println!("files={files} rounds={rounds}");
    println!(
        "git CLI `worktree add`: median {:.1} ms",
        c.as_secs_f64() * 1000.0
    );
    println!(
        "git2 Repository::worktree: median {:.1} ms",
        l.as_secs_f64() * 1000.0
    );
    println!("git2 / CLI = {:.2}x", l.as_secs_f64() / c.as_secs_f64());
}
