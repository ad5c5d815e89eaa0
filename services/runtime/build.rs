// The migrations are embedded by `sqlx::migrate!`: rebuild when one is added or changed (cargo
// does not watch the folder by itself, so a new migration would otherwise be missed by an
// incremental build).
//
// Tests that need PostgreSQL and Redis are built as ignored, with the reason, when
// TEST_DATABASE_URL or TEST_REDIS_URL is unset (as services/econsult/build.rs does): libtest
// cannot skip at run time, and a test that returned early printed `ok` although nothing ran.
// Under CI=true they are never ignored, so a missing variable fails them there.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for var in ["TEST_DATABASE_URL", "TEST_REDIS_URL", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(no_test_backends)");
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let backends = set("TEST_DATABASE_URL") && set("TEST_REDIS_URL");
    if !ci && !backends {
        println!("cargo::rustc-cfg=no_test_backends");
    }
}
