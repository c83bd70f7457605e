#[tokio::main]
async fn main() {
    // Test builds only: failpoints named in FAILPOINTS (`worker::pipeline=panic`).
    #[cfg(feature = "failpoints")]
    let scenario = fail::FailScenario::setup();
    let code = autodev::cli::main().await;
    #[cfg(feature = "failpoints")]
    scenario.teardown();
    std::process::exit(code);
}
