// The migrations are embedded by `sqlx::migrate!`: rebuild when one is added or changed (cargo
// does not watch the folder by itself, so a new migration would otherwise be missed by an
// incremental build).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
