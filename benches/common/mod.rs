//! What the benches share: their arguments, the synthetic repository they measure on, and
//! the median.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `[files] [rounds]` from the command line (cargo's own `--bench` flags skipped).
pub fn args(default_rounds: usize) -> (usize, usize) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let files = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default_rounds);
    (files, rounds)
}

/// `git -C dir args...`, with `GIT_INDEX_FILE` when `index` is given; its stdout.
pub fn git(dir: &Path, args: &[&str], index: Option<&Path>) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    if let Some(index) = index {
        cmd.env("GIT_INDEX_FILE", index);
    }
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `dir/repo`: `files` Rust files of about 850 bytes in 500 directories, one commit on
/// `main`.
pub fn synthetic_repo(dir: &Path, files: usize) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], None);
    for i in 0..files {
        let sub = repo.join(format!("src/m{:03}", i % 500));
        std::fs::create_dir_all(&sub).unwrap();
        let body = format!("// file {i}\n{}\n", "fn f() -> u32 { 42 }\n".repeat(40));
        std::fs::write(sub.join(format!("f{i}.rs")), body).unwrap();
    }
    git(&repo, &["add", "-A"], None);
    git(
        &repo,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-m",
            "tree",
        ],
        None,
    );
    repo
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
