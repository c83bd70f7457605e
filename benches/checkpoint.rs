//! A checkpoint of a running task's working tree: autodev's index kept between checkpoints
//! (`read-tree -m` keeps the stat data of unchanged files) against a fresh index read from
//! the tip (every file hashed again), on a synthetic repository where the agent changed a
//! few files. The working tree is a task repository as autodev makes one (its own `.git`,
//! borrowing the repository's objects); both methods read it from the repository's side.
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
    let home_git = repo.join(".git");
    let wt = dir.path().join("task");
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("bench_git_operations_total", "git operations"),
        &["operation"],
    )
    .unwrap();
    let autodev = autodev::git::ops::Git::new(counter, "bench", "bench@example.com");
    let main = git(&repo, &["rev-parse", "main"], None);
    git(&repo, &["branch", "task", &main], None);
    autodev
        .make_task_repo(&home_git, &wt, "task", &main, false)
        .await
        .unwrap();
    let ours_index = dir.path().join("kept.index");
    let side = "refs/autodev/checkpoints/bench";
    let message = "chore: bench checkpoint";
    // The first checkpoint of a run hashes everything; the bench measures the ones after it.
    let first = autodev
        .checkpoint(&home_git, &wt, "task", &ours_index, side, message, None)
        .await
        .unwrap();
    assert!(first.is_none(), "nothing changed yet");
    // Let the index entries age past the index file's own timestamp.
    std::thread::sleep(Duration::from_millis(1100));

    let work_tree = format!("--work-tree={}", wt.display());
    let git_dir = format!("--git-dir={}", home_git.display());
    let (mut kept, mut fresh) = (Vec::new(), Vec::new());
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
            let on_tree = |args: &[&str]| {
                let mut all = vec![git_dir.as_str(), work_tree.as_str()];
                all.extend_from_slice(args);
                git(&home_git, &all, Some(&index))
            };
            on_tree(&["read-tree", "task"]);
            on_tree(&["add", "--all"]);
            let tree = on_tree(&["write-tree"]);
            (t.elapsed(), tree)
        };
        let fresh_first = round % 2 == 0;
        let mut fresh_result = None;
        if fresh_first {
            fresh_result = Some(run_fresh());
        }
        let t = Instant::now();
        let commit = autodev
            .checkpoint(&home_git, &wt, "task", &ours_index, side, message, None)
            .await
            .unwrap()
            .expect("something changed");
        kept.push(t.elapsed());
        let (took, fresh_tree) = fresh_result.unwrap_or_else(run_fresh);
        fresh.push(took);
        let ours_tree = git(&repo, &["rev-parse", &format!("{commit}^{{tree}}")], None);
        assert_eq!(ours_tree, fresh_tree, "both methods see the same files");
    }
    println!(
        "files={files} rounds={rounds} fresh index (read-tree): {:?}  kept index (autodev): {:?}",
        median(fresh),
        median(kept)
    );
}
