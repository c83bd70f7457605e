//! A checkpoint of a running task's worktree: autodev's index seeded from the worktree's own
//! (stat data kept) against a fresh index read from HEAD (every file hashed again), on a
//! synthetic repository where the agent changed a few files.
//! Run: `cargo bench --bench checkpoint -- [files] [rounds]` (defaults: 20000 files, 5 rounds).
//! Both methods must give the same tree; BENCHMARKS.md keeps the numbers.

mod common;

use std::time::{Duration, Instant};

use common::{args, git, median, synthetic_repo};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (files, rounds) = args(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = synthetic_repo(dir.path(), files);
    let wt = dir.path().join("task");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "--quiet",
            "-b",
            "task",
            wt.to_str().unwrap(),
            "main",
        ],
        None,
    );
    // Let the worktree's index entries age past the index file's own timestamp.
    std::thread::sleep(Duration::from_millis(1100));
    git(&wt, &["status", "--porcelain"], None);

    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("bench_git_operations_total", "git operations"),
        &["operation"],
    )
    .unwrap();
    let autodev = autodev::gitops::Git::new(counter, "bench", "bench@example.com");
    let (mut seeded, mut fresh) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The agent's work since the last checkpoint: ten files changed, five new.
        for i in 0..10 {
            let f = wt.join(format!(
                "src/m{:03}/f{}.rs",
                (round * 10 + i) % 500,
                round * 10 + i
            ));
            std::fs::write(&f, format!("// changed in round {round}\n")).unwrap();
        }
        for i in 0..5 {
            std::fs::write(wt.join(format!("new-{round}-{i}.rs")), "fn g() {}\n").unwrap();
        }
        let index = dir.path().join(format!("fresh-{round}.index"));
        let run_fresh = || {
            let t = Instant::now();
            git(&wt, &["read-tree", "HEAD"], Some(&index));
            git(&wt, &["add", "--all"], Some(&index));
            let tree = git(&wt, &["write-tree"], Some(&index));
            (t.elapsed(), tree)
        };
        let side = format!("refs/autodev/checkpoints/round-{round}");
        let ours_index = dir.path().join(format!("seeded-{round}.index"));
        let fresh_first = round % 2 == 0;
        let mut fresh_result = None;
        if fresh_first {
            fresh_result = Some(run_fresh());
        }
        let t = Instant::now();
        let commit = autodev
            .checkpoint(&wt, &ours_index, &side, "chore: bench checkpoint")
            .await
            .unwrap()
            .expect("something changed");
        seeded.push(t.elapsed());
        let (took, fresh_tree) = fresh_result.unwrap_or_else(run_fresh);
        fresh.push(took);
        let ours_tree = git(&wt, &["rev-parse", &format!("{commit}^{{tree}}")], None);
        assert_eq!(ours_tree, fresh_tree, "both methods see the same worktree");
    }
    println!(
        "files={files} rounds={rounds} fresh index (read-tree HEAD): {:?}  seeded index (autodev): {:?}",
        median(fresh),
        median(seeded)
    );
}
