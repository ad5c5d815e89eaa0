// Tests that need PostgreSQL and Redis (the `postgres::` half of `on_both_backends!`, scaleout)
// are built as ignored, with the reason, when TEST_DATABASE_URL or TEST_REDIS_URL is unset: libtest
// cannot skip at run time, and a test that returned early printed `ok` although nothing ran.
// Under CI=true they are never ignored, so a missing variable fails them there.
fn main() {
    for var in [
        "TEST_DATABASE_URL",
        "TEST_REDIS_URL",
        "TEST_SERVICE_DATABASE_URL",
        "CI",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(no_test_backends)");
    println!("cargo::rustc-check-cfg=cfg(no_service_role)");
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let backends = set("TEST_DATABASE_URL") && set("TEST_REDIS_URL");
    if !ci && !backends {
        println!("cargo::rustc-cfg=no_test_backends");
    }
    // The restricted service role (migrations by the owner, the server without ownership).
    let service_role = backends && set("TEST_SERVICE_DATABASE_URL");
    if !ci && !service_role {
        println!("cargo::rustc-cfg=no_service_role");
    }
}
