// The test that replays the guaranteed pgbench scripts against the real schema needs
// PostgreSQL: it is built as ignored, with the reason, when TEST_DATABASE_URL is unset (libtest
// cannot skip at run time, and a test that returned early printed `ok` although nothing ran).
// Under CI=true it is never ignored, so a missing variable fails it there.
fn main() {
    for var in ["TEST_DATABASE_URL", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(no_test_database)");
    let set = std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && !set {
        println!("cargo::rustc-cfg=no_test_database");
    }
}
