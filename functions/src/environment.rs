//! The environment `ferry function` reads: one list, so the deployments (Terraform's Lambda
//! environment, Knative's Secret) can be checked against it (`stores/aws/tests/iac_contract.rs`).
//! Only the binary reads the values.

/// The functions a deployment runs, each from the same binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// The OpenAI-compatible API (`/v1`).
    Gateway,
    /// The admin API (`/admin/v1`): tenants, keys, models, prices, credit, usage.
    Admin,
    /// Scheduled jobs: expiring holds, closing months, reconciling.
    Billing,
}

impl Function {
    pub const ALL: [Function; 3] = [Function::Gateway, Function::Admin, Function::Billing];

    pub fn name(self) -> &'static str {
        match self {
            Function::Gateway => "gateway",
            Function::Admin => "admin",
            Function::Billing => "billing",
        }
    }

    pub fn parse(name: &str) -> Option<Function> {
        Function::ALL
            .into_iter()
            .find(|function| function.name() == name)
    }
}

/// One environment variable: its name, which functions read it, and whether a deployment on
/// the shared store (DynamoDB) must set it for them.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub read_by: &'static [Function],
    pub required_by: &'static [Function],
}

const ALL: &[Function] = &Function::ALL;
const NONE: &[Function] = &[];
const CALLERS: &[Function] = &[Function::Gateway, Function::Admin];

/// `dynamodb` or `sqlite` (the default: a file in `FERRY_DATA_DIR`, for one replica).
pub const STORE: Variable = Variable {
    name: "FERRY_STORE",
    read_by: ALL,
    required_by: ALL,
};
/// The DynamoDB table (with `FERRY_STORE=dynamodb`).
pub const DYNAMODB_TABLE: Variable = Variable {
    name: "FERRY_DYNAMODB_TABLE",
    read_by: ALL,
    required_by: ALL,
};
/// The S3 bucket billing exports invoices and usage to (under `exports/`) and the gateway
/// keeps uploaded files and batches in (under `files/`, `batches/`); without it, a directory in
/// `FERRY_DATA_DIR` (off Lambda; on Lambda the gateway then keeps no files).
pub const S3_BUCKET: Variable = Variable {
    name: "FERRY_S3_BUCKET",
    read_by: &[Function::Gateway, Function::Billing],
    required_by: &[Function::Gateway, Function::Billing],
};
/// `true` for S3-compatible servers that need path-style addressing.
pub const S3_FORCE_PATH_STYLE: Variable = Variable {
    name: "FERRY_S3_FORCE_PATH_STYLE",
    read_by: &[Function::Gateway, Function::Billing],
    required_by: NONE,
};
/// Where the SQLite store (and local exports) live.
pub const DATA_DIR: Variable = Variable {
    name: "FERRY_DATA_DIR",
    read_by: ALL,
    required_by: NONE,
};
/// The operator key the admin API accepts (registered on start).
pub const OPERATOR_KEY: Variable = Variable {
    name: "FERRY_OPERATOR_KEY",
    read_by: &[Function::Admin],
    required_by: &[Function::Admin],
};
/// OIDC: callers may present JWTs from this provider (all three or none).
pub const JWT_JWKS_URL: Variable = Variable {
    name: "FERRY_JWT_JWKS_URL",
    read_by: CALLERS,
    required_by: NONE,
};
pub const JWT_ISSUER: Variable = Variable {
    name: "FERRY_JWT_ISSUER",
    read_by: CALLERS,
    required_by: NONE,
};
pub const JWT_AUDIENCE: Variable = Variable {
    name: "FERRY_JWT_AUDIENCE",
    read_by: CALLERS,
    required_by: NONE,
};
/// The console's sign-in through the same OpenID provider (`[auth.jwt.console]`): its client
/// id there, and its secret for a confidential client (the admin function serves the sign-in).
pub const JWT_CONSOLE_CLIENT_ID: Variable = Variable {
    name: "FERRY_JWT_CONSOLE_CLIENT_ID",
    read_by: CALLERS,
    required_by: NONE,
};
pub const JWT_CONSOLE_CLIENT_SECRET: Variable = Variable {
    name: "FERRY_JWT_CONSOLE_CLIENT_SECRET",
    read_by: CALLERS,
    required_by: NONE,
};
/// Edges (`ferry-edge`): the secret shared with them (their hit reports are signed with it)
/// and the gateway's own key for the grants it hands them (both or neither).
pub const EDGE_SECRET: Variable = Variable {
    name: "FERRY_EDGE_SECRET",
    read_by: &[Function::Gateway],
    required_by: NONE,
};
pub const EDGE_GRANT_SECRET: Variable = Variable {
    name: "FERRY_EDGE_GRANT_SECRET",
    read_by: &[Function::Gateway],
    required_by: NONE,
};
/// A bearer token that may read `GET /metrics` (and nothing else); operator keys may too.
pub const METRICS_TOKEN: Variable = Variable {
    name: "FERRY_METRICS_TOKEN",
    read_by: CALLERS,
    required_by: NONE,
};
/// The GPU pool's control plane (`ferry scaler`'s URL): the console's pool page reads its
/// replicas and queue through the admin API, and prewarms it.
pub const POOL_URL: Variable = Variable {
    name: "FERRY_POOL_URL",
    read_by: &[Function::Admin],
    required_by: NONE,
};
/// Admit and settle a busy tenant's calls against credit leases (`true`): the gateway, off
/// Lambda (a frozen Lambda instance could not give its leases back; they would wait for their
/// hold to expire).
pub const LEASES: Variable = Variable {
    name: "FERRY_LEASES",
    read_by: &[Function::Gateway],
    required_by: NONE,
};
/// With leases, a directory whose disk outlives the process (a persistent volume) for the
/// usage journal: leased calls' usage is then written to the store in batches. Without it,
/// each leased call's usage is written to the store before its answer.
pub const JOURNAL_DIR: Variable = Variable {
    name: "FERRY_JOURNAL_DIR",
    read_by: &[Function::Gateway],
    required_by: NONE,
};
/// How long a hold (or a credit lease) waits for its settlement before the billing job's
/// `expire_holds` releases it, in seconds (default 900). Longer than any call may take: a call
/// is cut off a little before its hold would expire.
pub const HOLD_TTL_SECONDS: Variable = Variable {
    name: "FERRY_HOLD_TTL_SECONDS",
    read_by: &[Function::Gateway],
    required_by: NONE,
};
/// Log JSON lines (`true`) rather than text.
pub const LOG_JSON: Variable = Variable {
    name: "FERRY_LOG_JSON",
    read_by: ALL,
    required_by: NONE,
};
/// Where to listen when not on Lambda (Knative sets it).
pub const PORT: Variable = Variable {
    name: "PORT",
    read_by: ALL,
    required_by: NONE,
};

pub const VARIABLES: &[Variable] = &[
    LEASES,
    JOURNAL_DIR,
    HOLD_TTL_SECONDS,
    STORE,
    DYNAMODB_TABLE,
    S3_BUCKET,
    S3_FORCE_PATH_STYLE,
    DATA_DIR,
    OPERATOR_KEY,
    JWT_JWKS_URL,
    JWT_ISSUER,
    JWT_AUDIENCE,
    JWT_CONSOLE_CLIENT_ID,
    JWT_CONSOLE_CLIENT_SECRET,
    EDGE_SECRET,
    EDGE_GRANT_SECRET,
    METRICS_TOKEN,
    POOL_URL,
    LOG_JSON,
    PORT,
];

/// The variables `function` reads.
pub fn read_by(function: Function) -> impl Iterator<Item = &'static Variable> {
    VARIABLES
        .iter()
        .filter(move |variable| variable.read_by.contains(&function))
}

/// The variables a deployment on DynamoDB must set for `function`.
pub fn required_by(function: Function) -> impl Iterator<Item = &'static Variable> {
    VARIABLES
        .iter()
        .filter(move |variable| variable.required_by.contains(&function))
}
