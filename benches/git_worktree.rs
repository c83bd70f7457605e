//! Worktree creation, libgit2 (git2) against the git CLI, on a synthetic repository; and what
//! autodev makes today, a task repository of its own that borrows the repository's objects
//! (`Git::make_task_repo`: `init`, alternates, `read-tree -u`), against `worktree add`.
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("bench_git_operations_total", "git operations"),
        &["operation"],
    )
    .unwrap();
    let autodev = autodev::git::ops::Git::new(counter, "bench", "bench@example.com");
    let main = common::git(&repo, &["rev-parse", "main"], None);
    let mut own = Vec::new();
    let run_own = |round: usize| {
        let path = dir.path().join(format!("own-{round}"));
        let t = Instant::now();
        rt.block_on(autodev.make_task_repo(&repo.join(".git"), &path, "own", &main, false))
            .unwrap();
        t.elapsed()
    };
    // Rotate which method goes first, so none always meets a cold cache.
    for round in 0..rounds {
        match round % 3 {
            0 => {
                cli.push(run_cli(round));
                lib.push(run_lib(round));
                own.push(run_own(round));
            }
            1 => {
                lib.push(run_lib(round));
                own.push(run_own(round));
                cli.push(run_cli(round));
            }
            _ => {
                own.push(run_own(round));
                cli.push(run_cli(round));
                lib.push(run_lib(round));
            }
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
    let o = median(own);
    println!(
        "autodev task repository (init, alternates, read-tree -u): median {:.1} ms, {:.2}x of `worktree add`",
        o.as_secs_f64() * 1000.0,
        o.as_secs_f64() / c.as_secs_f64()
    );
}
