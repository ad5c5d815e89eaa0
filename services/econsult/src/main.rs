//! `econsult`: run the services, apply migrations, mint development tokens and identity numbers.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use econsult::{Application, Config, ServiceKind};
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use econsult_runtime::nin::{self, NationalId};
use econsult_runtime::telemetry::Telemetry;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

#[derive(Parser)]
#[command(
    name = "econsult",
    version,
    about = "Digital access to the regular GP: booking, e-consultation, video, statistics"
)]
struct Cli {
    /// Directory for the embedded SQLite database and the development signing key.
    #[arg(long, global = true, env = "ECONSULT_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Database URL (sqlite://… or postgres://…); default: SQLite file in the data directory.
    #[arg(
        long,
        global = true,
        env = "ECONSULT_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The README's walk-throughs.
#[derive(Clone, Copy, ValueEnum)]
enum Walkthrough {
    /// "Booking a slot, step by step".
    BookASlot,
    /// "When the own GP has no slot in time: the guarantee engine".
    Guarantee,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the selected services on one port until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit (run it as the schema's owner).
    Migrate {
        /// PostgreSQL: then grant the service role what the server needs and no more (append
        /// only on the access log and the e-consultations' messages and attachments); run the
        /// server as that role with `--no-migrate`.
        #[arg(long, env = "ECONSULT_SERVICE_ROLE", value_name = "ROLE")]
        grant_to: Option<String>,
    },
    /// Work with the access log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a token signed by the local development key (never trusted with --issuer or a JWKS).
    ///
    /// The token goes to stdout alone, so `TOKEN=$(econsult dev-token --role ops)` works.
    /// Examples:
    ///   econsult dev-token --role patient            (a fresh synthetic identity number)
    ///   econsult dev-token --role patient --nin "$(econsult dev-nin --age 40)"
    ///   econsult dev-token --role ehr --org 910000001
    ///   econsult dev-token --role clinician --hpr 1234567 --org 910000001
    ///   econsult dev-token --role ops
    #[command(verbatim_doc_comment)]
    DevToken(DevTokenArgs),
    /// Print valid synthetic national identity numbers (month + 80, never a real person's), one
    /// a line, for `dev-token --role patient --nin` and for putting patients on a GP's list.
    DevNin {
        /// How many numbers to print.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Age in years of the people the numbers are for (default: a random age from 18 to 80).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=150))]
        age: Option<u32>,
    },
    /// Run a README walk-through against a running server whose development key is in the data
    /// directory: `book-a-slot` (an EHR publishes, a patient finds, holds and books) or
    /// `guarantee` (the engine's offers when the own GP has no slot in time).
    Walkthrough {
        /// Which walk-through.
        #[arg(value_enum)]
        name: Walkthrough,
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
    /// Fill the data directory (or --database-url) with a week of a demo practice: GPs, lists of
    /// synthetic patients, slots, bookings, e-consultations, a held video session, attendance.
    ///
    /// Runs the system in this process with a clock moving through last week's working days,
    /// prints a line a day and the statistics at the end. Run it before `serve` (not beside it);
    /// a second run finds the demo practice and changes nothing.
    Demo,
    /// Check a running server's gRPC health (exit 0 when SERVING): for container health checks.
    Health {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Service name to check; empty checks the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the access log's hash chain from its first row and report the first broken link
    /// (exit 1): a row changed, or one removed before it. Read-only; rows of the last second
    /// or so are not sealed yet and are counted, not checked.
    Verify {
        /// Also check the chain against heads the servers logged (lines "audit chain head
        /// chain_seq=… hash=…" from the log store, text or JSON): a chain recomputed after a
        /// change passes the walk but not its earlier heads.
        #[arg(long, value_name = "FILE")]
        anchors: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// gRPC (and gRPC-Web) listen address.
    #[arg(long, env = "ECONSULT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus metrics listen address (GET /metrics).
    #[arg(
        long,
        env = "ECONSULT_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,
    /// Comma-separated services to run.
    #[arg(
        long,
        env = "ECONSULT_SERVICES",
        value_delimiter = ',',
        default_value = "booking,consultation,signalling,stats,notify"
    )]
    services: Vec<ServiceKind>,
    /// Redis URL: events through Redis Streams so that replicas cooperate.
    #[arg(long, env = "ECONSULT_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of the Redis keys.
    #[arg(long, env = "ECONSULT_REDIS_NAMESPACE", default_value = "econsult")]
    redis_namespace: String,
    /// A trusted token issuer with its own JWKS and the roles it may grant (repeat, or
    /// `;`-separate in the variable): `iss=URL,jwks=PATH_OR_URL,roles=patient|clinician|ehr|ops`
    /// (several roles joined with `+`). A JWKS URL must be https (http only to loopback).
    #[arg(
        long = "issuer",
        env = "ECONSULT_ISSUERS",
        value_delimiter = ';',
        value_name = "iss=URL,jwks=PATH_OR_URL,roles=ROLES"
    )]
    trusted_issuers: Vec<econsult_runtime::auth::IssuerConfig>,
    /// JWKS file of one identity provider (with one --trusted-issuer, granting every role);
    /// with no JWKS and no --issuer the dev key is trusted.
    #[arg(long, env = "ECONSULT_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// JWKS URL of one identity provider, like --jwks-file.
    #[arg(long, env = "ECONSULT_JWKS_URL")]
    jwks_url: Option<String>,
    /// How often to re-fetch JWKS URLs.
    #[arg(long, env = "ECONSULT_JWKS_REFRESH_SECONDS", default_value_t = 600)]
    jwks_refresh_seconds: u64,
    /// The one token issuer of --jwks-file or --jwks-url (use --issuer for several).
    #[arg(
        long = "trusted-issuer",
        env = "ECONSULT_TRUSTED_ISSUERS",
        value_delimiter = ','
    )]
    issuers: Vec<String>,
    /// Required token audience.
    #[arg(long, env = "ECONSULT_AUDIENCE", default_value = "econsult")]
    audience: String,
    /// How long a patient's hold lasts, in seconds.
    #[arg(long, env = "ECONSULT_HOLD_TTL_SECONDS", default_value_t = 300)]
    hold_ttl_seconds: i64,
    /// STUN URLs for video consultations (repeat or comma-separate).
    #[arg(long = "stun-url", env = "ECONSULT_STUN_URLS", value_delimiter = ',')]
    stun_urls: Vec<String>,
    /// TURN URLs for video consultations (coturn with use-auth-secret).
    #[arg(long = "turn-url", env = "ECONSULT_TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// The coturn static-auth-secret; without it a development secret is kept in the data
    /// directory.
    #[arg(long, env = "ECONSULT_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Lifetime of TURN credentials, in seconds.
    #[arg(long, env = "ECONSULT_TURN_TTL_SECONDS", default_value_t = 3600)]
    turn_ttl_seconds: u64,
    /// Requests per second each patient may make (burst 4x); 0 = unlimited.
    #[arg(long, env = "ECONSULT_RATE_LIMIT_PATIENT", default_value_t = 10.0)]
    rate_limit_patient: f64,
    /// Requests per second each clinician may make (burst 4x); 0 = unlimited.
    #[arg(long, env = "ECONSULT_RATE_LIMIT_CLINICIAN", default_value_t = 20.0)]
    rate_limit_clinician: f64,
    /// Requests per second each EHR system may make (burst 2x); 0 = unlimited.
    #[arg(long, env = "ECONSULT_RATE_LIMIT_EHR", default_value_t = 2000.0)]
    rate_limit_ehr: f64,
    /// Days a stored idempotent answer is kept (a retry after that is a new call); at least 1.
    #[arg(long, env = "ECONSULT_IDEMPOTENCY_RETENTION_DAYS", default_value_t = 7)]
    idempotency_retention_days: u64,
    /// Days a published outbox event is kept (change streams resume and the statistics rebuild
    /// reads only within it); at least 1.
    #[arg(long, env = "ECONSULT_OUTBOX_RETENTION_DAYS", default_value_t = 30)]
    outbox_retention_days: u64,
    /// Most concurrent HTTP/2 streams per client connection.
    #[arg(
        long,
        env = "ECONSULT_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    max_streams_per_connection: u32,
    /// Most open client connections; beyond it a new connection is closed at once.
    #[arg(long, env = "ECONSULT_MAX_CONNECTIONS", default_value_t = econsult::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a new connection may take to send its first request (the HTTP/2 preface)
    /// before it is closed.
    #[arg(long, env = "ECONSULT_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 10)]
    handshake_timeout_seconds: u64,
    /// Seconds after which a connection is asked to go (GOAWAY): it closes when its calls and
    /// streams have ended and the client reconnects; bounds idle connections.
    #[arg(
        long,
        env = "ECONSULT_MAX_CONNECTION_AGE_SECONDS",
        default_value_t = 1800
    )]
    max_connection_age_seconds: u64,
    /// Most streaming calls (Subscribe, WatchInbox, WatchBookings, Signal, …) one caller (token
    /// subject) may have open at once; 0 = no cap.
    #[arg(
        long,
        env = "ECONSULT_MAX_STREAMS_PER_CALLER",
        default_value_t = econsult_runtime::streams::DEFAULT_MAX_STREAMS_PER_CALLER
    )]
    max_streams_per_caller: u32,
    /// Serve gRPC server reflection (true/false). It answers without a token, so by default it
    /// is served only when listening on a loopback address (a developer's machine).
    #[arg(long, env = "ECONSULT_REFLECTION", value_name = "BOOL")]
    reflection: Option<bool>,
    /// An origin (scheme://host[:port]) whose web pages may call the API (CORS, gRPC-Web);
    /// repeat it, or give a comma-separated list in the variable. Default: none, same-origin
    /// pages only. A wildcard is refused: every call carries a bearer token.
    #[arg(
        long = "cors-origin",
        env = "ECONSULT_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Accept synthetic identity numbers (month + 80 or + 40) with a configured identity
    /// provider: for test environments, whose identity providers log in synthetic people. The
    /// development key always accepts them; production leaves this off and refuses them.
    #[arg(long, env = "ECONSULT_ALLOW_SYNTHETIC_NINS")]
    allow_synthetic_nins: bool,
    /// Do not apply migrations on start: the schema's owner ran `econsult migrate --grant-to
    /// <role>` and this server connects as that restricted service role.
    #[arg(long, env = "ECONSULT_NO_MIGRATE")]
    no_migrate: bool,
    /// Most database connections (PostgreSQL pool; SQLite read pool besides its one writer).
    #[arg(
        long,
        env = "ECONSULT_DB_MAX_CONNECTIONS",
        default_value_t = econsult_runtime::db::DEFAULT_MAX_CONNECTIONS
    )]
    db_max_connections: u32,
    /// Seconds to drain calls and streams on shutdown.
    #[arg(long, env = "ECONSULT_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    shutdown_grace_seconds: u64,
    /// Name of this instance on the event bus (default: host name and process id).
    #[arg(long, env = "ECONSULT_INSTANCE_ID")]
    instance_id: Option<String>,
    /// How long a slot offered from the waitlist is held for the patient, in minutes (then the
    /// next in line gets it).
    #[arg(long, env = "ECONSULT_WAITLIST_HOLD_MINUTES", default_value_t = 120)]
    waitlist_hold_minutes: i64,
    /// Notify: SMTP server host for e-mail; without it e-mails go to the log.
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_HOST")]
    notify_smtp_host: Option<String>,
    /// Notify: SMTP port (587 for STARTTLS, 465 for TLS).
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_PORT", default_value_t = 587)]
    notify_smtp_port: u16,
    /// Notify: SMTP security: starttls (required), tls (implicit), none (loopback relay only).
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_SECURITY", value_enum, default_value_t = SmtpSecurityArg::Starttls)]
    notify_smtp_security: SmtpSecurityArg,
    /// Notify: SMTP user name (AUTH after TLS).
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_USER")]
    notify_smtp_user: Option<String>,
    /// Notify: SMTP password.
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_PASSWORD", hide_env_values = true)]
    notify_smtp_password: Option<String>,
    /// Notify: the From address of e-mails.
    #[arg(
        long,
        env = "ECONSULT_NOTIFY_SMTP_FROM",
        default_value = "Legekontoret <ikke-svar@econsult.invalid>"
    )]
    notify_smtp_from: String,
    /// Notify: a PEM file with a CA certificate to trust for the SMTP server (a private relay).
    #[arg(long, env = "ECONSULT_NOTIFY_SMTP_CA_FILE")]
    notify_smtp_ca_file: Option<PathBuf>,
    /// Notify: the SMS gateway's URL (JSON POST, body signed with HMAC-SHA256; https, http only
    /// to loopback); without it SMS go to the log.
    #[arg(long, env = "ECONSULT_NOTIFY_SMS_URL")]
    notify_sms_url: Option<String>,
    /// Notify: the secret of the SMS gateway's HMAC signature.
    #[arg(long, env = "ECONSULT_NOTIFY_SMS_SECRET", hide_env_values = true)]
    notify_sms_secret: Option<String>,
    /// Notify: sender name or number of SMS.
    #[arg(long, env = "ECONSULT_NOTIFY_SMS_SENDER", default_value = "Legekontor")]
    notify_sms_sender: String,
    /// Notify: the link to log in that every message carries.
    #[arg(
        long,
        env = "ECONSULT_NOTIFY_LOGIN_LINK",
        default_value = "http://127.0.0.1:8080/"
    )]
    notify_login_link: String,
    /// Notify: key sealing patients' contact details at rest (base64 of 32 bytes); without it
    /// a key is made and kept in the data directory.
    #[arg(long, env = "ECONSULT_NOTIFY_CONTACT_KEY", hide_env_values = true)]
    notify_contact_key: Option<String>,
    /// File with the key of patients' pseudonymous event keys (base64 of at least 32 bytes,
    /// the same on every replica); without it a key is made and kept in the data directory.
    #[arg(long, env = "ECONSULT_EVENT_KEY_FILE")]
    event_key_file: Option<std::path::PathBuf>,
    /// Notify: attempts before a message that keeps failing temporarily is given up.
    #[arg(long, env = "ECONSULT_NOTIFY_MAX_ATTEMPTS", default_value_t = 8)]
    notify_max_attempts: u32,
    /// Notify: seconds before the first retry (doubled each attempt, at most an hour).
    #[arg(long, env = "ECONSULT_NOTIFY_RETRY_BASE_SECONDS", default_value_t = 30)]
    notify_retry_base_seconds: u64,
    /// Log format on stderr: auto is pretty on a terminal and JSON otherwise (files, pipes,
    /// containers); pretty never writes colour codes unless stderr is a terminal.
    #[arg(long, env = "ECONSULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Clone, Copy, ValueEnum)]
enum SmtpSecurityArg {
    Starttls,
    Tls,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Patient,
    Clinician,
    Ehr,
    Ops,
}

#[derive(clap::Args)]
struct DevTokenArgs {
    /// Who the token is for.
    #[arg(long, value_enum)]
    role: Role,
    /// Patient: the 11-digit national identity number, e.g. one from `econsult dev-nin`;
    /// without it a fresh synthetic number is made and printed on stderr.
    #[arg(long)]
    nin: Option<String>,
    /// Patient: ID-porten level.
    #[arg(long, default_value = REQUIRED_ACR)]
    acr: String,
    /// Clinician: HPR number.
    #[arg(long)]
    hpr: Option<String>,
    /// Clinician and EHR: organisation number (9 digits).
    #[arg(long)]
    org: Option<String>,
    /// Clinician and EHR: scopes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "econsult:booking.read,econsult:booking.write,econsult:stats.read"
    )]
    scopes: Vec<String>,
    /// EHR client id / ops subject.
    #[arg(long, default_value = "dev-client")]
    subject: String,
    /// Patient and clinician: the person's display name (the `name` claim, as Helsenorge's
    /// identity service and HelseID give it; a patient acting for someone else is shown by
    /// it, e.g. "booked by your parent <name>"); EHR: the system's name
    /// (`helseid://claims/client/client_name`). Shown in the patient's access log. An EHR
    /// names the person it acts for per call: headers `x-acting-name`, `x-acting-hpr`.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Patient: act for this person (11 digits). With `--relation parent` the token carries
    /// the claim `represents` naming them (as the identity provider sends the population
    /// register's relation); with `fullmakt` the token is the holder's plain token and the
    /// relation is a fullmakt granted with GrantFullmakt. Either way each call names the person
    /// in the `x-on-behalf-of` header (printed on stderr).
    #[arg(long, requires = "relation")]
    on_behalf_of: Option<String>,
    /// Patient: how the token's person is related to `--on-behalf-of`.
    #[arg(long, value_enum, requires = "on_behalf_of")]
    relation: Option<DevRelation>,
    /// Patient: the represented person (with `--relation parent`), or else the token's own
    /// person, has a strictly confidential address.
    #[arg(long)]
    protected_address: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DevRelation {
    Parent,
    Fullmakt,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(cli.data_dir, cli.database_url, *args).await,
        Command::Migrate { grant_to } => {
            let mut config = Config::embedded(cli.data_dir.clone());
            config.database_url = cli.database_url;
            std::fs::create_dir_all(&cli.data_dir)?;
            let db = econsult_runtime::db::Db::connect(&config.database_url()).await?;
            db.migrate().await?;
            if let Some(role) = grant_to {
                db.grant_service_role(&role).await?;
                eprintln!("granted the service role {role}");
            }
            db.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { anchors },
        } => {
            let anchors = match anchors {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("read {}", file.display()))?;
                    let found = econsult_runtime::audit::parse_anchors(&text);
                    anyhow::ensure!(
                        !found.is_empty(),
                        "{}: no \"audit chain head\" lines with chain_seq and hash",
                        file.display()
                    );
                    found
                }
                None => Vec::new(),
            };
            let mut config = Config::embedded(cli.data_dir.clone());
            config.database_url = cli.database_url;
            let db = econsult_runtime::db::Db::connect(&config.database_url()).await?;
            let mut shown = 0;
            let found = econsult_runtime::audit::verify(&db, |rows| {
                if rows >= shown + 10_000 {
                    shown = rows;
                    eprintln!("{rows} rows checked");
                }
            })
            .await?;
            let disagrees = econsult_runtime::audit::verify_anchors(&db, &anchors).await?;
            db.close().await;
            match found.broken {
                None => {
                    if let Some((a, why)) = disagrees {
                        println!(
                            "broken at chain place {} (logged hash {}): {why}; checked against {} logged heads",
                            a.chain_seq,
                            a.hash,
                            anchors.len()
                        );
                        std::process::exit(1);
                    }
                    println!(
                        "ok: {} rows chained, {} not sealed yet, {} logged heads agree",
                        found.rows,
                        found.unsealed,
                        anchors.len()
                    );
                    Ok(())
                }
                Some(b) => {
                    println!(
                        "broken at row id {} (chain place {}): {}; {} rows before it are intact",
                        b.id, b.chain_seq, b.reason, found.rows
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Walkthrough { name, addr } => {
            let mut out = std::io::stdout();
            match name {
                Walkthrough::BookASlot => {
                    econsult::walkthrough::book_a_slot(addr, &cli.data_dir, &mut out).await
                }
                Walkthrough::Guarantee => {
                    econsult::walkthrough_guarantee::guarantee(addr, &cli.data_dir, &mut out).await
                }
            }
        }
        Command::Demo => {
            let mut config = Config::embedded(cli.data_dir);
            config.database_url = cli.database_url;
            let mut out = std::io::stdout();
            econsult::demo::seed(config, chrono::Utc::now(), &mut out).await?;
            Ok(())
        }
        Command::Health { addr, service } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus,
                health_client::HealthClient,
            };
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2))
                .connect()
                .await?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest { service })
                .await?
                .into_inner()
                .status;
            anyhow::ensure!(
                status == ServingStatus::Serving as i32,
                "not serving (status {status})"
            );
            println!("SERVING");
            Ok(())
        }
        Command::DevNin { count, age } => {
            let today = chrono::Utc::now().date_naive();
            for _ in 0..count {
                println!("{}", fresh_nin(today, age)?.as_str());
            }
            Ok(())
        }
        Command::DevToken(a) => {
            let keys = DevKeys::load_or_create(&cli.data_dir)?;
            let need = |v: Option<String>, what: &str| {
                v.with_context(|| format!("--{what} is required for this role"))
            };
            let spec = match a.role {
                Role::Patient => {
                    let nin = patient_nin(a.nin)?;
                    let mut represents = Vec::new();
                    let mut own_protected = a.protected_address;
                    if let Some(other) = &a.on_behalf_of {
                        let other = NationalId::parse(other).map_err(|e| {
                            anyhow::anyhow!(
                                "--on-behalf-of {other:?} is not a valid identity number ({e})"
                            )
                        })?;
                        if let Some(DevRelation::Parent) = a.relation {
                            represents.push(econsult_runtime::auth::RepresentsClaim {
                                pid: other.as_str().to_owned(),
                                relation: "parent".into(),
                                protected_address: a.protected_address,
                                name: None,
                            });
                            own_protected = false;
                        }
                        eprintln!(
                            "act for them with the header: {}: {}",
                            econsult_runtime::auth::ON_BEHALF_OF_HEADER,
                            other.as_str()
                        );
                    }
                    TokenSpec::PatientWithRelations {
                        nin,
                        acr: a.acr,
                        represents,
                        protected_address: own_protected,
                        name: a.name.clone(),
                    }
                }
                Role::Clinician => TokenSpec::Clinician {
                    hpr_number: need(a.hpr, "hpr")?,
                    org_number: need(a.org, "org")?,
                    scopes: a.scopes,
                },
                Role::Ehr => TokenSpec::Ehr {
                    client_id: a.subject,
                    org_number: need(a.org, "org")?,
                    scopes: a.scopes,
                },
                Role::Ops => TokenSpec::Ops { subject: a.subject },
            };
            let mut claims = spec.claims(chrono::Utc::now().timestamp(), a.ttl);
            match a.role {
                Role::Clinician => claims.name = a.name,
                Role::Ehr => claims.client_name = a.name,
                Role::Patient => {}
                Role::Ops => {
                    anyhow::ensure!(
                        a.name.is_none(),
                        "--name is for patient, clinician and ehr tokens"
                    )
                }
            }
            println!("{}", keys.sign(&claims)?);
            Ok(())
        }
    }
}

/// A fresh synthetic identity number of someone `age` (default: 18 to 80) years old.
fn fresh_nin(today: chrono::NaiveDate, age: Option<u32>) -> anyhow::Result<NationalId> {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let age = age.unwrap_or_else(|| rng.gen_range(18..=80));
    nin::synthetic_aged(today, age, &mut rng)
        .with_context(|| format!("no identity numbers exist for someone {age} years old"))
}

/// The patient token's identity number: `--nin` if valid (refused here, not by every later
/// call), else a fresh synthetic one, announced on stderr.
fn patient_nin(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(given) => match NationalId::parse(&given) {
            Ok(id) => Ok(id.as_str().to_owned()),
            Err(e) => anyhow::bail!(
                "--nin {given:?} is not a valid identity number ({e}); the server would refuse \
                 the token. Print a valid synthetic one with `econsult dev-nin`, or leave out \
                 --nin to get one"
            ),
        },
        None => {
            let id = fresh_nin(chrono::Utc::now().date_naive(), None)?;
            eprintln!("patient identity number (synthetic): {}", id.as_str());
            Ok(id.as_str().to_owned())
        }
    }
}

async fn serve(
    data_dir: PathBuf,
    database_url: Option<String>,
    a: ServeArgs,
) -> anyhow::Result<()> {
    let json = match a.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => {
            use std::io::IsTerminal as _;
            !std::io::stderr().is_terminal()
        }
    };
    let instance_id = a
        .instance_id
        .clone()
        .unwrap_or_else(econsult::default_instance_id);
    let telemetry = Telemetry::init("econsult", &instance_id, json)?;
    let mut config = Config::embedded(data_dir);
    notify_config(&mut config, &a)?;
    config.booking.waitlist_hold_ttl =
        chrono::Duration::minutes(a.waitlist_hold_minutes.clamp(5, 24 * 60));
    config.listen = a.listen;
    config.metrics_listen = Some(a.metrics_listen);
    config.registry = Some(telemetry.registry());
    config.database_url = database_url;
    config.redis_url = a.redis_url;
    config.redis_namespace = a.redis_namespace;
    config.services = a.services;
    config.trusted_issuers = a.trusted_issuers;
    config.jwks_file = a.jwks_file;
    config.jwks_url = a.jwks_url;
    config.jwks_refresh = Duration::from_secs(a.jwks_refresh_seconds.max(10));
    config.issuers = a.issuers;
    config.audience = a.audience;
    config.issuer_configs()?;
    config.booking.hold_ttl = chrono::Duration::seconds(a.hold_ttl_seconds.clamp(30, 3600));
    config.signalling.stun_urls = a.stun_urls;
    config.signalling.turn_urls = a.turn_urls;
    let days = |d: u64| Duration::from_secs(d.clamp(1, 36_500) * 86_400);
    let limit = |per_second: f64, burst: f64| econsult_runtime::ratelimit::Limit {
        per_second: per_second.max(0.0),
        burst: (per_second * burst).max(1.0),
    };
    config.rate_limits.patient = limit(a.rate_limit_patient, 4.0);
    config.rate_limits.clinician = limit(a.rate_limit_clinician, 4.0);
    config.rate_limits.ehr = limit(a.rate_limit_ehr, 2.0);
    config.max_streams_per_connection = a.max_streams_per_connection.max(1);
    config.retention.idempotency = days(a.idempotency_retention_days);
    config.retention.outbox = days(a.outbox_retention_days);
    config.max_connections = a.max_connections.max(1);
    config.handshake_timeout = Duration::from_secs(a.handshake_timeout_seconds.clamp(1, 300));
    config.max_connection_age = Duration::from_secs(a.max_connection_age_seconds.max(60));
    config.max_streams_per_caller = a.max_streams_per_caller;
    config.reflection = a.reflection;
    config.cors_origins = a.cors_origins.clone();
    config.allow_synthetic_nins = a.allow_synthetic_nins;
    config.migrate = !a.no_migrate;
    config.db_max_connections = a.db_max_connections.max(1);
    config.signalling.turn_secret = a.turn_secret.filter(|s| !s.is_empty());
    config.signalling.turn_ttl = Duration::from_secs(a.turn_ttl_seconds.clamp(60, 86_400));
    config.shutdown_grace = Duration::from_secs(a.shutdown_grace_seconds);
    config.instance_id = instance_id;
    let start = econsult::StartLine::new(&config);
    let app = Application::start(config).await?;
    start.log(app.local_addr(), app.metrics_addr(), json);
    let result = app.run_until(shutdown_signal()).await;
    telemetry.shutdown();
    result
}

/// The notify settings of `a`.
fn notify_config(config: &mut Config, a: &ServeArgs) -> anyhow::Result<()> {
    use econsult_notify::{SmsConfig, SmtpConfig, SmtpSecurity};
    let n = &mut config.notify;
    n.login_link = a.notify_login_link.clone();
    n.max_attempts = a.notify_max_attempts.max(1);
    n.retry_base = Duration::from_secs(a.notify_retry_base_seconds.clamp(1, 3600));
    if let Some(host) = &a.notify_smtp_host {
        let ca_pem = match &a.notify_smtp_ca_file {
            Some(f) => Some(std::fs::read(f).with_context(|| format!("read {}", f.display()))?),
            None => None,
        };
        n.smtp = Some(SmtpConfig {
            host: host.clone(),
            port: a.notify_smtp_port,
            security: match a.notify_smtp_security {
                SmtpSecurityArg::Starttls => SmtpSecurity::StartTls,
                SmtpSecurityArg::Tls => SmtpSecurity::Tls,
                SmtpSecurityArg::None => SmtpSecurity::None,
            },
            credentials: a
                .notify_smtp_user
                .clone()
                .map(|u| (u, a.notify_smtp_password.clone().unwrap_or_default())),
            from: a.notify_smtp_from.clone(),
            ca_pem,
            timeout: Duration::from_secs(10),
        });
    }
    if let Some(url) = &a.notify_sms_url {
        n.sms = Some(SmsConfig {
            url: url.clone(),
            secret: a
                .notify_sms_secret
                .clone()
                .context("--notify-sms-secret is required with --notify-sms-url")?,
            sender: a.notify_sms_sender.clone(),
            timeout: Duration::from_secs(10),
        });
    }
    config.notify_contact_key = a.notify_contact_key.clone().filter(|k| !k.is_empty());
    config.event_key_file = a
        .event_key_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
