#[tokio::main]
async fn main() {
    // Processes of the same user (an agent run without the sandbox) may not read this
    // process's memory or `/proc/<pid>/environ`, which hold its secrets, nor trace it.
    // SAFETY: prctl with PR_SET_DUMPABLE only changes this process's own flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // Test builds only: failpoints named in FAILPOINTS (`pipeline::pipeline=panic`).
    #[cfg(feature = "failpoints")]
    let scenario = fail::FailScenario::setup();
    let code = autodev::app::cli::main().await;
    #[cfg(feature = "failpoints")]
    scenario.teardown();
    std::process::exit(code);
}
