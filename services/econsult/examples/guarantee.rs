//! The README walk-through of the guarantee engine: against a running `econsult serve`
//! (embedded defaults), a practice whose patient's own GP has no slot within five working days;
//! the patient sees the engine's offers and joins the priority waitlist. The steps are in
//! `econsult::walkthrough_guarantee`.
//!
//! ```text
//! cargo run -p econsult --example guarantee -- [http://127.0.0.1:50051] [data-dir]
//! ```

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let data_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "data".into()));
    econsult::walkthrough_guarantee::guarantee(addr, &data_dir, &mut std::io::stdout()).await
}
