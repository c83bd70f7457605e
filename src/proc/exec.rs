//! Running a child process the way agents and gates need: its own process group, no shell, an
//! explicit environment, a timeout and a cancel signal that kill the whole group, and output
//! captured up to a bound (the tail is kept).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long output is still read after the child ended: a process it left behind (one that
/// left the group with `setsid`) may hold the pipe open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Job {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The whole environment of the child: nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Written to standard input, which is then closed. `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr (the last ones).
    pub output_limit: usize,
    /// Bytes the child reads on file descriptor 3 (the sandbox's options, which would show
    /// in `/proc/*/cmdline` if they were arguments).
    pub fd3: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
}

impl Ending {
    pub fn success(self) -> bool {
        self == Ending::Exited(0)
    }

    pub fn describe(self, timeout: Duration) -> String {
        match self {
            Ending::Exited(c) => format!("exit code {c}"),
            Ending::Signalled(s) => format!("killed by signal {s}"),
            Ending::TimedOut => format!("timed out after {}s", timeout.as_secs()),
            Ending::Cancelled => "cancelled".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub ending: Ending,
    pub stdout: String,
    pub stderr: String,
    /// Bytes dropped from the front of stdout / stderr to keep within the bound.
    pub truncated: usize,
    pub duration: Duration,
}

impl Output {
    /// Stdout and stderr together, for people to read.
    pub fn combined_tail(&self, limit: usize) -> String {
        let mut s = String::new();
        if self.truncated > 0 {
            s.push_str(&format!("[... {} bytes cut ...]\n", self.truncated));
        }
        s.push_str(&self.stdout);
        if !self.stderr.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&self.stderr);
        }
        tail_chars(&s, limit)
    }
}

/// The last `limit` bytes of `s`, cut at a character boundary.
pub fn tail_chars(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut start = s.len() - limit;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// A live copy of children's output for people to watch while they run: the last
/// [`Tap::LIMIT`] bytes of stdout and stderr as they came, and a count that changes with every
/// write. Shared: the run that owns it copies it out while its children write.
#[derive(Debug, Clone, Default)]
pub struct Tap(std::sync::Arc<std::sync::Mutex<TapInner>>);

#[derive(Debug, Default)]
struct TapInner {
    text: VecDeque<u8>,
    writes: u64,
}

impl Tap {
    pub const LIMIT: usize = 32 * 1024;

    pub fn write(&self, bytes: &[u8]) {
        let mut inner = self.0.lock().expect("lock");
        inner.text.extend(bytes);
        let excess = inner.text.len().saturating_sub(Self::LIMIT);
        inner.text.drain(..excess);
        inner.writes += 1;
    }

    /// A line of autodev's own between children's output (which gate runs now).
    pub fn note(&self, line: &str) {
        let inner = self.0.lock().expect("lock");
        let ends_line = inner.text.back().is_none_or(|b| *b == b'\n');
        drop(inner);
        self.write(format!("{}── {line} ──\n", if ends_line { "" } else { "\n" }).as_bytes());
    }

    /// How many writes it has seen, and what it holds.
    pub fn read(&self) -> (u64, String) {
        let mut inner = self.0.lock().expect("lock");
        let writes = inner.writes;
        let bytes = inner.text.make_contiguous();
        (writes, String::from_utf8_lossy(bytes).into_owned())
    }
}

tokio::task_local! {
    /// The tap of the run this task works for, if its output is watched.
    static RUN_TAP: Tap;
}

/// Runs `work` with `tap` as [`current_tap`] (what its agents and gates print goes there).
pub async fn with_tap<F: std::future::Future>(tap: Tap, work: F) -> F::Output {
    RUN_TAP.scope(tap, work).await
}

/// The tap of the run the calling task works for, if any.
pub fn current_tap() -> Option<Tap> {
    RUN_TAP.try_with(Tap::clone).ok()
}

/// A child that is running; `pgid` lets the caller record it for crash recovery.
pub struct Started {
    pub pgid: i32,
    child: tokio::process::Child,
    job: Job,
    started: Instant,
    stdout: tokio::task::JoinHandle<(Vec<u8>, usize)>,
    stderr: tokio::task::JoinHandle<(Vec<u8>, usize)>,
    /// Tells the output readers to stop and hand over what they have.
    stop_reading: CancellationToken,
}

/// Starts `job` in a new process group. Errors when the program cannot be started (not found,
/// not executable).
pub fn start(job: Job) -> std::io::Result<Started> {
    start_tapped(job, None)
}

/// [`start`], with the child's output also copied to `tap` as it comes.
pub fn start_tapped(job: Job, tap: Option<Tap>) -> std::io::Result<Started> {
    use std::os::unix::process::CommandExt;
    let mut std_cmd = std::process::Command::new(&job.program);
    std_cmd
        .args(&job.args)
        .current_dir(&job.cwd)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let fd3 = match &job.fd3 {
        Some(data) => Some(pass_fd3(&mut std_cmd, data)?),
        None => None,
    };
    let mut cmd = Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // The child has its copy; the parent's goes.
    drop(fd3);
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    if let (Some(input), Some(mut stdin)) = (job.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            // A child that exits without reading its input is not an error here.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let limit = job.output_limit.max(1);
    let stop_reading = CancellationToken::new();
    let stdout = tokio::spawn(read_tail(
        child.stdout.take(),
        limit,
        stop_reading.clone(),
        tap.clone(),
    ));
    let stderr = tokio::spawn(read_tail(
        child.stderr.take(),
        limit,
        stop_reading.clone(),
        tap,
    ));
    Ok(Started {
        pgid,
        child,
        job,
        started: Instant::now(),
        stdout,
        stderr,
        stop_reading,
    })
}

impl Started {
    /// Waits for the child, killing its group on timeout or cancel. Afterwards the group is
    /// killed in any case, so nothing it started in the background is left behind.
    pub async fn wait(mut self, cancel: &CancellationToken) -> Output {
        let ending = tokio::select! {
            status = self.child.wait() => match status {
                Ok(s) => exit_ending(s),
                Err(_) => Ending::Signalled(0),
            },
            _ = tokio::time::sleep(self.job.timeout) => Ending::TimedOut,
            _ = cancel.cancelled() => Ending::Cancelled,
        };
        if matches!(ending, Ending::TimedOut | Ending::Cancelled) {
            terminate_group(self.pgid).await;
            let _ = self.child.wait().await;
        } else {
            kill_group(self.pgid, libc::SIGKILL);
        }
        // What left the group (`setsid`) but still carries the run's marker goes too.
        if let Some(marker) = self
            .job
            .env
            .iter()
            .find(|(k, _)| k == MARKER_VAR)
            .map(|(k, v)| format!("{k}={v}"))
        {
            kill_marked(&marker).await;
        }
        // Output is read for a moment more, then taken as it is: a pipe held open by a
        // process that escaped must not hold the task.
        let stop = self.stop_reading.clone();
        tokio::spawn(async move {
            tokio::time::sleep(OUTPUT_GRACE).await;
            stop.cancel();
        });
        let (out, out_cut) = self.stdout.await.unwrap_or_default();
        let (err, err_cut) = self.stderr.await.unwrap_or_default();
        self.stop_reading.cancel();
        Output {
            ending,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            truncated: out_cut + err_cut,
            duration: self.started.elapsed(),
        }
    }
}

/// Gives the child `data` to read on its file descriptor 3: a pipe that a thread fills (and
/// gives up on when the child closes it). The returned read end must be kept until the child
/// is spawned.
pub fn pass_fd3(
    cmd: &mut std::process::Command,
    data: &[u8],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors it creates; close-on-exec keeps them out of
    // every other child.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, mut writer) = unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let data = data.to_vec();
    std::thread::spawn(move || {
        let _ = writer.write_all(&data);
    });
    let raw = reader.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls: fcntl and dup2.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(raw, 3) == 3
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(reader)
}

/// The per-job shim without a sandbox (`autodev reap`): runs `command` as a child subreaper,
/// so everything it starts, even what leaves its group and clears its environment, becomes
/// the shim's when orphaned; when the command ends, all of that is killed; exits as the
/// command did.
pub fn reap(command: &[String]) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("autodev reap: no command to run");
        return 2;
    };
    // SAFETY: prctl only changes this process's own flag; the handler does nothing, so a
    // SIGTERM to the job's group (a timeout, a cancel) ends the command but not the shim,
    // which then ends what the command left. (A handler, unlike an ignored signal, is reset
    // for the command by exec.)
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(
            libc::SIGTERM,
            on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let code = match std::process::Command::new(program).args(args).status() {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("autodev reap: running {program}: {e}");
            127
        }
    };
    kill_descendants();
    code
}

extern "C" fn on_sigterm(_: libc::c_int) {}

/// Kills every child of this process (the orphans a subreaper inherits included) until none
/// is left, reaping them.
fn kill_descendants() {
    for _ in 0..200 {
        let children = own_children();
        // SAFETY: waitpid with WNOHANG only collects children that have ended.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        if children.is_empty() {
            return;
        }
        for pid in children {
            // SAFETY: kill only sends a signal, to a child of this process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids of this process's children, from every thread's `children` list.
fn own_children() -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Starts and waits.
pub async fn run(job: Job, cancel: &CancellationToken) -> std::io::Result<Output> {
    Ok(start(job)?.wait(cancel).await)
}

/// [`run`], with the output also copied to `tap`.
pub async fn run_tapped(
    job: Job,
    cancel: &CancellationToken,
    tap: Option<Tap>,
) -> std::io::Result<Output> {
    Ok(start_tapped(job, tap)?.wait(cancel).await)
}

fn exit_ending(status: std::process::ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ending::Exited(c),
        (None, Some(s)) => Ending::Signalled(s),
        (None, None) => Ending::Signalled(0),
    }
}

/// SIGTERM to the group, then SIGKILL after a grace period if anything is left. Never
/// autodev's own group.
pub async fn terminate_group(pgid: i32) {
    if pgid == own_group() || !kill_group(pgid, libc::SIGTERM) {
        return;
    }
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill_group(pgid, libc::SIGKILL);
}

/// Sends `signal` to process group `pgid`; false when no such group exists.
pub fn kill_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 || pgid == own_group() {
        return false;
    }
    // SAFETY: killpg only sends a signal; a wrong pgid yields ESRCH, which we report.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Whether process `pid` exists (as anyone's: a process of another user counts).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 checks for existence without sending anything.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether group `pgid` has a member that still runs. A zombie (dead, not yet collected by
/// its parent) does not count: where the processes a sandbox leaves are collected by an init
/// that does so every second or two, waiting for them would hold a run for that long.
pub fn group_alive(pgid: i32) -> bool {
    // Signal 0 checks for existence (zombies included) without sending anything.
    // SAFETY: killpg with signal 0 sends nothing.
    if pgid <= 1 || unsafe { libc::killpg(pgid, 0) } != 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        let Some(stat) = is_pid
            .then(|| std::fs::read_to_string(entry.path().join("stat")).ok())
            .flatten()
        else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; the name may hold anything, so fields are
        // counted after its last `)`.
        let mut fields = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

/// Kills a process group left by an earlier run, but only if its leader still carries
/// `marker` in its environment, so a recycled pid is never hit.
pub async fn kill_leftover_group(pgid: i32, marker: &str) -> bool {
    let environ = match std::fs::read(format!("/proc/{pgid}/environ")) {
        Ok(e) => e,
        Err(_) => {
            // The leader is gone; members may remain, but without the leader we cannot prove
            // they are ours. Check any process in the group for the marker.
            return kill_marked_members(pgid, marker).await;
        }
    };
    if !environ_has(&environ, marker) {
        return false;
    }
    terminate_group(pgid).await;
    true
}

async fn kill_marked_members(pgid: i32, marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: getpgid only reads process state.
        if unsafe { libc::getpgid(pid) } != pgid {
            continue;
        }
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && environ_has(&environ, marker)
        {
            terminate_group(pgid).await;
            return true;
        }
    }
    false
}

/// The `NAME=value` put in the environment of everything a run starts (agents, gates), by
/// which a later worker finds what a dead one left running.
pub fn run_marker(owner: &str, key: crate::core::ids::TaskKey, run_seq: i64) -> String {
    format!("{MARKER_VAR}={owner}-{key}-{run_seq}")
}

/// The variable of the run marker.
pub const MARKER_VAR: &str = "AUTODEV_RUN";

/// autodev's own process group, which no clean-up may signal (a process can join it).
fn own_group() -> i32 {
    // SAFETY: getpgrp only reads this process's state.
    unsafe { libc::getpgrp() }
}

/// Stops the process group of every process carrying `marker` in its environment: an agent
/// whose worker died after starting it but before recording its group. Returns whether any
/// was found.
pub async fn kill_marked(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let mut groups = Vec::new();
    let mut found_alone = false;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && environ_has(&environ, marker)
        {
            // SAFETY: getpgid only reads process state.
            let pgid = unsafe { libc::getpgid(pid) };
            if pgid == own_group() {
                // It joined autodev's own group: it goes alone.
                // SAFETY: kill only sends a signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                found_alone = true;
            } else if pgid > 1 && !groups.contains(&pgid) {
                groups.push(pgid);
            }
        }
    }
    for pgid in &groups {
        terminate_group(*pgid).await;
    }
    found_alone || !groups.is_empty()
}

fn environ_has(environ: &[u8], marker: &str) -> bool {
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == marker.as_bytes())
}

async fn read_tail<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
    stop: CancellationToken,
    tap: Option<Tap>,
) -> (Vec<u8>, usize) {
    let Some(mut reader) = reader else {
        return (Vec::new(), 0);
    };
    let mut kept: VecDeque<u8> = VecDeque::new();
    let mut dropped = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tap) = &tap {
                    tap.write(&buf[..n]);
                }
                kept.extend(&buf[..n]);
                if kept.len() > limit {
                    let excess = kept.len() - limit;
                    kept.drain(..excess);
                    dropped += excess;
                }
            }
        }
    }
    (kept.into(), dropped)
}

/// Where `program` would be found on `path` (a `PATH` value), or itself if it has a slash.
pub fn which(program: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    path?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Job {
        Job {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: None,
            timeout,
            output_limit: 16,
            fd3: None,
        }
    }

    #[tokio::test]
    async fn output_tail_is_bounded() {
        let out = run(
            sh("seq 1 1000; echo oops >&2; exit 3", Duration::from_secs(10)),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.ending, Ending::Exited(3));
        assert!(out.stdout.ends_with("999\n1000\n"), "{:?}", out.stdout);
        assert!(out.stdout.len() <= 16);
        assert_eq!(out.stderr, "oops\n");
        assert!(out.truncated > 3000);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let started = start(sh(
            "sleep 300 & sleep 300; wait",
            Duration::from_millis(300),
        ))
        .unwrap();
        let pgid = started.pgid;
        let out = started.wait(&CancellationToken::new()).await;
        assert_eq!(out.ending, Ending::TimedOut);
        assert!(!group_alive(pgid), "group {pgid} still alive");
    }

    #[tokio::test]
    async fn environment_is_only_what_is_given() {
        let mut job = sh("env", Duration::from_secs(5));
        job.output_limit = 4096;
        let out = run(job, &CancellationToken::new()).await.unwrap();
        let names: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split('=').next())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| ["PATH", "PWD", "SHLVL", "_"].contains(n)),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn marked_processes_are_found_without_their_group_on_record() {
        let marker = format!("AUTODEV_RUN=test-{}-unrecorded", std::process::id());
        let mut job = sh("sleep 300 & sleep 300; wait", Duration::from_secs(60));
        let (k, v) = marker.split_once('=').unwrap();
        job.env.push((k.into(), v.into()));
        let started = start(job).unwrap();
        let pgid = started.pgid;
        let waiting = tokio::spawn(async move { started.wait(&CancellationToken::new()).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(kill_marked(&marker).await, "found by its marker");
        let _ = waiting.await;
        assert!(!group_alive(pgid), "group {pgid} still alive");
        assert!(!kill_marked(&marker).await, "nothing left to find");
    }

    #[test]
    fn which_finds_programs() {
        assert!(which("sh", Some("/nonexistent:/bin")).is_some());
        assert!(which("no-such-program-xyz", Some("/bin:/usr/bin")).is_none());
    }
}
