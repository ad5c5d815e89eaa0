//! The README walk-through: against a running `econsult serve` (embedded defaults), act as the
//! GP's EHR (create a GP, put a fresh synthetic patient on the list, publish slots on the next
//! working day) and then as the patient (find, hold, book, list). The steps are in
//! `econsult::walkthrough`.
//!
//! ```text
//! cargo run -p econsult --example book_a_slot -- [http://127.0.0.1:50051] [data-dir]
//! ```

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let data_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "data".into()));
    econsult::walkthrough::book_a_slot(addr, &data_dir, &mut std::io::stdout()).await
}
