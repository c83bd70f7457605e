#[tokio::main]
async fn main() {
    std::process::exit(autodev::cli::main().await);
}
