//! The Terraform (`iac/terraform`) against the code, read with an HCL parser: the table's key
//! schema, index and TTL attribute; the environment each function is given against what it
//! reads; each function's IAM actions against what the adapters call; the table wired to the
//! functions; the billing schedule's jobs. The same for the Knative base (`knative/functions`).
//! Each check is shown to fail when one side alone changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_aws::schema;
use ferry_functions::environment::{self, Function};
use hcl::{Block, Body, Expression, ObjectKey, TraversalOperator};

/// What the code expects of the infrastructure.
#[derive(Debug, Clone)]
struct Contract {
    partition_key: String,
    sort_key: String,
    index: (String, String, String),
    ttl_attribute: String,
    /// Per function: the variables it reads, and those it must be given.
    reads: BTreeMap<&'static str, BTreeSet<String>>,
    requires: BTreeMap<&'static str, BTreeSet<String>>,
    dynamodb_actions: BTreeMap<&'static str, BTreeSet<String>>,
    s3_actions: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Contract {
    fn from_code() -> Contract {
        let per_function = |names: &dyn Fn(Function) -> BTreeSet<String>| {
            Function::ALL
                .into_iter()
                .map(|function| (function.name(), names(function)))
                .collect()
        };
        let strings = |list: &[&str]| list.iter().map(|item| (*item).to_owned()).collect();
        Contract {
            partition_key: schema::PARTITION_KEY.into(),
            sort_key: schema::SORT_KEY.into(),
            index: (
                schema::INDEX.into(),
                schema::INDEX_PARTITION_KEY.into(),
                schema::INDEX_SORT_KEY.into(),
            ),
            ttl_attribute: schema::TTL_ATTRIBUTE.into(),
            reads: per_function(&|function| {
                environment::read_by(function)
                    .map(|variable| variable.name.to_owned())
                    .collect()
            }),
            requires: per_function(&|function| {
                environment::required_by(function)
                    .map(|variable| variable.name.to_owned())
                    .collect()
            }),
            dynamodb_actions: per_function(&|function| {
                strings(schema::dynamodb_actions(function.name()))
            }),
            s3_actions: per_function(&|function| strings(schema::s3_actions(function.name()))),
        }
    }
}

fn terraform_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../iac/terraform"))
}

fn parse(path: &Path) -> Body {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    hcl::parse(&text).unwrap_or_else(|error| panic!("{path:?}: {error}"))
}

fn blocks<'a>(body: &'a Body, kind: &str, labels: &[&str]) -> Vec<&'a Block> {
    body.blocks()
        .filter(|block| block.identifier() == kind)
        .filter(|block| {
            labels.is_empty()
                || block
                    .labels()
                    .iter()
                    .map(|label| label.as_str())
                    .eq(labels.iter().copied())
        })
        .collect()
}

fn attribute<'a>(body: &'a Body, name: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attribute| attribute.key() == name)
        .map(|attribute| attribute.expr())
}

fn text(expression: Option<&Expression>) -> Option<String> {
    match expression? {
        Expression::String(text) => Some(text.clone()),
        _ => None,
    }
}

/// `a.b.c` as text, for a traversal or a variable.
fn path(expression: &Expression) -> Option<String> {
    match expression {
        Expression::Variable(variable) => Some(variable.as_str().to_owned()),
        Expression::Traversal(traversal) => {
            let mut parts = vec![path(&traversal.expr)?];
            for operator in &traversal.operators {
                match operator {
                    TraversalOperator::GetAttr(name) => parts.push(name.as_str().to_owned()),
                    _ => return None,
                }
            }
            Some(parts.join("."))
        }
        _ => None,
    }
}

fn key_name(key: &ObjectKey) -> Option<String> {
    match key {
        ObjectKey::Identifier(identifier) => Some(identifier.as_str().to_owned()),
        ObjectKey::Expression(expression) => text(Some(expression)),
        _ => None,
    }
}

/// Every `locals` attribute of a file.
fn locals(body: &Body) -> BTreeMap<String, Expression> {
    blocks(body, "locals", &[])
        .into_iter()
        .flat_map(|block| block.body().attributes())
        .map(|attribute| (attribute.key().to_owned(), attribute.expr().clone()))
        .collect()
}

/// The entries an object-valued expression may have: object literals, `merge(...)` of them,
/// either arm of a conditional, and `local.x` references, followed.
fn entries(
    expression: &Expression,
    locals: &BTreeMap<String, Expression>,
) -> BTreeMap<String, Expression> {
    let mut found = BTreeMap::new();
    match expression {
        Expression::Object(object) => {
            for (key, value) in object {
                if let Some(name) = key_name(key) {
                    found.insert(name, value.clone());
                }
            }
        }
        Expression::FuncCall(call) => {
            for argument in &call.args {
                found.extend(entries(argument, locals));
            }
        }
        Expression::Conditional(conditional) => {
            found.extend(entries(&conditional.true_expr, locals));
            found.extend(entries(&conditional.false_expr, locals));
        }
        Expression::Parenthesis(inner) => found.extend(entries(inner, locals)),
        other => {
            if let Some(name) =
                path(other).and_then(|path| path.strip_prefix("local.").map(str::to_owned))
                && let Some(value) = locals.get(&name)
            {
                found.extend(entries(value, locals));
            }
        }
    }
    found
}

fn string_list(expression: Option<&Expression>) -> BTreeSet<String> {
    match expression {
        Some(Expression::Array(items)) => {
            items.iter().filter_map(|item| text(Some(item))).collect()
        }
        _ => BTreeSet::new(),
    }
}

fn expect(problems: &mut Vec<String>, what: &str, found: Option<String>, wanted: &str) {
    if found.as_deref() != Some(wanted) {
        problems.push(format!(
            "{what}: the code expects {wanted:?}, the Terraform has {found:?}"
        ));
    }
}

/// Every way the Terraform under `root` disagrees with `contract`.
fn disagreements(root: &Path, contract: &Contract) -> Vec<String> {
    let mut problems = Vec::new();

    // The table.
    let data = parse(&root.join("modules/data/main.tf"));
    let tables = blocks(&data, "resource", &["aws_dynamodb_table", "main"]);
    let table = tables.first().expect("aws_dynamodb_table.main").body();
    expect(
        &mut problems,
        "table hash_key",
        text(attribute(table, "hash_key")),
        &contract.partition_key,
    );
    expect(
        &mut problems,
        "table range_key",
        text(attribute(table, "range_key")),
        &contract.sort_key,
    );
    let declared: BTreeSet<(String, String)> = blocks(table, "attribute", &[])
        .iter()
        .filter_map(|block| {
            Some((
                text(attribute(block.body(), "name"))?,
                text(attribute(block.body(), "type"))?,
            ))
        })
        .collect();
    let (index, index_partition, index_sort) = &contract.index;
    let wanted: BTreeSet<(String, String)> = [
        &contract.partition_key,
        &contract.sort_key,
        index_partition,
        index_sort,
    ]
    .into_iter()
    .map(|name| (name.clone(), "S".to_owned()))
    .collect();
    expect(
        &mut problems,
        "table attributes",
        Some(format!("{declared:?}")),
        &format!("{wanted:?}"),
    );
    let indexes = blocks(table, "global_secondary_index", &[]);
    match indexes.as_slice() {
        [gsi] => {
            let gsi = gsi.body();
            expect(
                &mut problems,
                "index name",
                text(attribute(gsi, "name")),
                index,
            );
            expect(
                &mut problems,
                "index hash_key",
                text(attribute(gsi, "hash_key")),
                index_partition,
            );
            expect(
                &mut problems,
                "index range_key",
                text(attribute(gsi, "range_key")),
                index_sort,
            );
            expect(
                &mut problems,
                "index projection",
                text(attribute(gsi, "projection_type")),
                "ALL",
            );
        }
        other => expect(
            &mut problems,
            "index count",
            Some(other.len().to_string()),
            "1",
        ),
    }
    let ttl = blocks(table, "ttl", &[]);
    expect(
        &mut problems,
        "table TTL attribute",
        ttl.first()
            .and_then(|block| text(attribute(block.body(), "attribute_name"))),
        &contract.ttl_attribute,
    );

    // Each function's environment and permissions.
    let functions = parse(&root.join("modules/functions/main.tf"));
    let locals = locals(&functions);
    let environment = locals
        .get("environment")
        .map(|expression| entries(expression, &locals))
        .unwrap_or_default();
    let dynamodb = locals
        .get("dynamodb_actions")
        .map(|expression| entries(expression, &locals))
        .unwrap_or_default();
    let s3 = locals
        .get("s3_actions")
        .map(|expression| entries(expression, &locals))
        .unwrap_or_default();
    // One function per name the binary knows, each told its name by its handler (`_HANDLER`).
    let declared: BTreeSet<String> = locals
        .get("functions")
        .map(|expression| entries(expression, &locals).into_keys().collect())
        .unwrap_or_default();
    let known: BTreeSet<String> = Function::ALL
        .map(|function| function.name().to_owned())
        .into();
    if declared != known {
        problems.push(format!(
            "the Terraform declares the functions {declared:?}, the binary has {known:?}"
        ));
    }
    for lambda in blocks(&functions, "resource", &["aws_lambda_function"]) {
        let for_each = attribute(lambda.body(), "for_each").and_then(path);
        let handler = attribute(lambda.body(), "handler").and_then(path);
        if for_each.as_deref() != Some("local.functions") || handler.as_deref() != Some("each.key")
        {
            problems.push(format!(
                "a Lambda function's handler ({handler:?} over {for_each:?}) is not its function's name"
            ));
        }
    }
    for function in Function::ALL.map(Function::name) {
        let given = environment
            .get(function)
            .map(|expression| entries(expression, &locals))
            .unwrap_or_default();
        for name in given.keys() {
            if !contract.reads[function].contains(name) {
                problems.push(format!(
                    "the Terraform gives {function} {name}, which it does not read"
                ));
            }
        }
        for name in &contract.requires[function] {
            if !given.contains_key(name) {
                problems.push(format!(
                    "{function} needs {name}, which the Terraform does not give it"
                ));
            }
        }
        if let Some(table) = given.get("FERRY_DYNAMODB_TABLE") {
            expect(
                &mut problems,
                &format!("{function}'s table"),
                path(table),
                "var.table_name",
            );
        }
        let granted = string_list(dynamodb.get(function));
        if granted != contract.dynamodb_actions[function] {
            problems.push(format!(
                "{function}'s DynamoDB actions: the code calls {:?}, the Terraform grants {granted:?}",
                contract.dynamodb_actions[function]
            ));
        }
        let granted = string_list(s3.get(function));
        if granted != contract.s3_actions[function] {
            problems.push(format!(
                "{function}'s S3 actions: the code calls {:?}, the Terraform grants {granted:?}",
                contract.s3_actions[function]
            ));
        }
    }

    // The example wires the data module's table and bucket into the functions.
    let example = parse(&root.join("examples/complete/main.tf"));
    for (input, output) in [
        ("table_name", "module.data.table_name"),
        ("table_arn", "module.data.table_arn"),
        ("bucket_name", "module.data.bucket_name"),
    ] {
        let wired = blocks(&example, "module", &["functions"])
            .first()
            .and_then(|block| attribute(block.body(), input))
            .and_then(path);
        expect(
            &mut problems,
            &format!("the functions' {input}"),
            wired,
            output,
        );
    }

    // The schedule sends jobs the billing function knows.
    let schedule = parse(&root.join("modules/billing_schedule/main.tf"));
    let schedule_locals = self::locals(&schedule);
    let mut jobs = 0;
    for expression in schedule_locals.values() {
        for (rule, body) in entries(expression, &schedule_locals) {
            let Some(Expression::FuncCall(call)) = entries(&body, &schedule_locals).remove("input")
            else {
                continue;
            };
            jobs += 1;
            let payload: serde_json::Value = call
                .args
                .first()
                .map(|argument| {
                    entries(argument, &schedule_locals)
                        .into_iter()
                        .filter_map(|(key, value)| {
                            Some((key, serde_json::Value::String(text(Some(&value))?)))
                        })
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                })
                .unwrap_or_default();
            if let Err(error) =
                serde_json::from_value::<ferry_functions::billing::Job>(payload.clone())
            {
                problems.push(format!(
                    "schedule {rule} sends {payload}, not a job: {error}"
                ));
            }
        }
    }
    if jobs == 0 {
        problems.push("the billing schedule sends no jobs".into());
    }
    problems
}

#[test]
fn the_terraform_agrees_with_the_code() {
    let problems = disagreements(&terraform_dir(), &Contract::from_code());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A copy of the Terraform with `from` replaced by `to` in one file.
struct Changed(PathBuf);

impl Changed {
    fn new(file: &str, from: &str, to: &str) -> Changed {
        let root = std::env::temp_dir().join(format!(
            "ferry-iac-{}-{}",
            std::process::id(),
            file.replace('/', "-")
        ));
        for relative in [
            "modules/data/main.tf",
            "modules/functions/main.tf",
            "modules/billing_schedule/main.tf",
            "examples/complete/main.tf",
        ] {
            let mut text = std::fs::read_to_string(terraform_dir().join(relative)).unwrap();
            if relative == file {
                assert!(text.contains(from), "{from:?} not in {file}");
                text = text.replacen(from, to, 1);
            }
            let target = root.join(relative);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, text).unwrap();
        }
        Changed(root)
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_caught(problems: &[String], expected: &str) {
    assert!(
        problems.iter().any(|problem| problem.contains(expected)),
        "expected a problem mentioning {expected:?}, got {problems:#?}"
    );
}

#[test]
fn a_change_to_the_terraform_alone_is_caught() {
    let code = Contract::from_code();
    let cases = [
        // An env var renamed in the Terraform only: the function reads the old name.
        (
            "modules/functions/main.tf",
            "FERRY_DYNAMODB_TABLE = var.table_name",
            "FERRY_DYNAMO_TABLE = var.table_name",
            "needs FERRY_DYNAMODB_TABLE",
        ),
        // The table's key renamed.
        (
            "modules/data/main.tf",
            "hash_key                    = \"pk\"",
            "hash_key                    = \"PK\"",
            "table hash_key",
        ),
        // Another table wired to the functions than the data module's.
        (
            "examples/complete/main.tf",
            "table_name         = module.data.table_name",
            "table_name         = \"ferry-other\"",
            "the functions' table_name",
        ),
        // A permission the adapters need, dropped.
        (
            "modules/functions/main.tf",
            "\"dynamodb:Scan\",",
            "",
            "billing's DynamoDB actions",
        ),
        // A function the binary does not have.
        (
            "modules/functions/main.tf",
            "    billing = {\n      memory_mb",
            "    accounting = {\n      memory_mb",
            "declares the functions",
        ),
        // A job the billing function does not know.
        (
            "modules/billing_schedule/main.tf",
            "job = \"expire_holds\"",
            "job = \"expire_hold\"",
            "not a job",
        ),
    ];
    for (file, from, to, expected) in cases {
        let changed = Changed::new(file, from, to);
        assert_caught(&disagreements(&changed.0, &code), expected);
    }
}

#[test]
fn a_change_to_the_code_alone_is_caught() {
    let terraform = terraform_dir();
    let mut renamed = Contract::from_code();
    for names in renamed
        .reads
        .values_mut()
        .chain(renamed.requires.values_mut())
    {
        if names.remove("FERRY_DYNAMODB_TABLE") {
            names.insert("FERRY_TABLE".into());
        }
    }
    assert_caught(&disagreements(&terraform, &renamed), "needs FERRY_TABLE");
    assert_caught(
        &disagreements(&terraform, &renamed),
        "gives gateway FERRY_DYNAMODB_TABLE, which it does not read",
    );

    let mut rekeyed = Contract::from_code();
    rekeyed.sort_key = "sort".into();
    assert_caught(&disagreements(&terraform, &rekeyed), "table range_key");

    let mut more = Contract::from_code();
    more.dynamodb_actions
        .get_mut("gateway")
        .unwrap()
        .insert("dynamodb:BatchGetItem".into());
    assert_caught(
        &disagreements(&terraform, &more),
        "gateway's DynamoDB actions",
    );
}

// ---------------------------------------------------------------------------------------------
// Knative (`knative/functions/base`): each Service runs a function the binary has, its
// environment (its Secrets' keys, by the example Secret) holds what it needs and nothing the
// functions do not read, and the PingSources send jobs the billing function knows to it.

fn knative_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../knative/functions/base"
    ))
}

fn yaml_documents(text: &str) -> Vec<yaml_serde::Value> {
    use serde::Deserialize as _;
    yaml_serde::Deserializer::from_str(text)
        .map(|document| yaml_serde::Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

fn field<'a>(value: &'a yaml_serde::Value, path: &[&str]) -> Option<&'a yaml_serde::Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn strings(value: Option<&yaml_serde::Value>) -> Vec<String> {
    value
        .and_then(yaml_serde::Value::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every way the Knative base under `dir` disagrees with the code.
fn knative_disagreements(dir: &Path, contract: &Contract) -> Vec<String> {
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            documents.extend(yaml_documents(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let kind = |document: &yaml_serde::Value| {
        field(document, &["kind"])
            .and_then(|kind| kind.as_str())
            .map(str::to_owned)
    };
    let name = |document: &yaml_serde::Value| {
        field(document, &["metadata", "name"])
            .and_then(|name| name.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let secrets: BTreeMap<String, BTreeSet<String>> = documents
        .iter()
        .filter(|document| kind(document).as_deref() == Some("Secret"))
        .map(|secret| {
            let keys = field(secret, &["stringData"])
                .or_else(|| field(secret, &["data"]))
                .and_then(yaml_serde::Value::as_mapping)
                .map(|keys| {
                    keys.keys()
                        .filter_map(|key| key.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (name(secret), keys)
        })
        .collect();
    let read_by_any: BTreeSet<&String> = contract.reads.values().flatten().collect();
    let mut problems = Vec::new();
    let mut services = BTreeSet::new();
    for service in documents
        .iter()
        .filter(|document| kind(document).as_deref() == Some("Service"))
    {
        let containers = field(service, &["spec", "template", "spec", "containers"])
            .and_then(yaml_serde::Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for container in &containers {
            let args = strings(container.get("args"));
            let function = match args.as_slice() {
                [command, function] if command == "function" => function.clone(),
                other => {
                    problems.push(format!(
                        "Service {}: args {other:?} run no function",
                        name(service)
                    ));
                    continue;
                }
            };
            if !contract.reads.contains_key(function.as_str()) {
                problems.push(format!(
                    "Service {} runs `function {function}`, which the binary lacks",
                    name(service)
                ));
                continue;
            }
            services.insert(name(service));
            let mut given = BTreeSet::new();
            for source in container
                .get("envFrom")
                .and_then(yaml_serde::Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let secret = field(source, &["secretRef", "name"])
                    .and_then(|name| name.as_str())
                    .unwrap_or_default();
                match secrets.get(secret) {
                    Some(keys) => given.extend(keys.iter().cloned()),
                    None => problems.push(format!(
                        "{function} reads the Secret {secret}, which no example shows"
                    )),
                }
            }
            for variable in container
                .get("env")
                .and_then(yaml_serde::Value::as_sequence)
                .into_iter()
                .flatten()
            {
                if let Some(variable) = field(variable, &["name"]).and_then(|name| name.as_str()) {
                    given.insert(variable.to_owned());
                }
            }
            for variable in &given {
                // One Secret serves the three functions; the AWS and OpenTelemetry SDKs read
                // their own variables.
                let sdk = variable.starts_with("AWS_") || variable.starts_with("OTEL_");
                if !sdk && !read_by_any.contains(variable) {
                    problems.push(format!(
                        "Knative gives {function} {variable}, which no function reads"
                    ));
                }
            }
            for required in &contract.requires[function.as_str()] {
                if !given.contains(required) {
                    problems.push(format!(
                        "Knative's {function} needs {required}, which it is not given"
                    ));
                }
            }
        }
    }
    for source in documents
        .iter()
        .filter(|document| kind(document).as_deref() == Some("PingSource"))
    {
        let data = field(source, &["spec", "data"])
            .and_then(|data| data.as_str())
            .unwrap_or_default();
        if let Err(error) = serde_json::from_str::<ferry_functions::billing::Job>(data) {
            problems.push(format!(
                "PingSource {} sends {data}, not a job: {error}",
                name(source)
            ));
        }
        let target = field(source, &["spec", "sink", "ref", "name"])
            .and_then(|name| name.as_str())
            .unwrap_or_default();
        let uri = field(source, &["spec", "sink", "uri"])
            .and_then(|uri| uri.as_str())
            .unwrap_or_default();
        if !services.contains(target) || uri != "/jobs" {
            problems.push(format!(
                "PingSource {} sends to {target}{uri}, not a billing function's /jobs",
                name(source)
            ));
        }
    }
    if services.len() != Function::ALL.len() {
        problems.push(format!(
            "Knative runs {services:?}, not one Service per function"
        ));
    }
    problems
}

#[test]
fn the_knative_services_agree_with_the_code() {
    let problems = knative_disagreements(&knative_dir(), &Contract::from_code());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_change_to_knative_alone_is_caught() {
    let code = Contract::from_code();
    let cases = [
        (
            "secret.example.yaml",
            "FERRY_DYNAMODB_TABLE: ferry",
            "FERRY_TABLE: ferry",
            "needs FERRY_DYNAMODB_TABLE",
        ),
        (
            "pingsources.yaml",
            "{\"job\":\"expire_holds\"}",
            "{\"job\":\"expire\"}",
            "not a job",
        ),
        (
            "gateway.yaml",
            "args: [\"function\", \"gateway\"]",
            "args: [\"function\", \"gateways\"]",
            "which the binary lacks",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = std::env::temp_dir().join(format!("ferry-knative-{}-{file}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(knative_dir()).unwrap() {
            let path = entry.unwrap().path();
            let mut text = std::fs::read_to_string(&path).unwrap();
            if path.file_name().is_some_and(|name| name == file) {
                assert!(text.contains(from), "{from:?} not in {file}");
                text = text.replacen(from, to, 1);
            }
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
        let problems = knative_disagreements(&dir, &code);
        let _ = std::fs::remove_dir_all(&dir);
        assert_caught(&problems, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// The image: every base pinned by digest, and nothing fetched at build time run unverified.

fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut args = BTreeMap::new();
    let mut stages = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some((name, value)) = line
            .strip_prefix("ARG ")
            .and_then(|arg| arg.split_once('='))
        {
            args.insert(format!("${{{name}}}"), value.to_owned());
        }
        if let Some(from) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = from
                .split_whitespace()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let image = args
                .get(words[0])
                .cloned()
                .unwrap_or_else(|| words[0].to_owned());
            let pinned = image.split_once("@sha256:").is_some_and(|(_, digest)| {
                digest.len() == 64 && digest.bytes().all(|byte| byte.is_ascii_hexdigit())
            });
            if !pinned && !stages.contains(&image) {
                problems.push(format!("FROM {image}: not pinned by digest"));
            }
            if let [.., as_word, stage] = words[..]
                && as_word.eq_ignore_ascii_case("as")
            {
                stages.insert(stage.to_owned());
            }
        }
        let piped = line.replace(' ', "");
        if ["|sh", "|bash", "|sudosh"]
            .iter()
            .any(|pipe| piped.contains(pipe))
        {
            problems.push(format!("a script piped into a shell: {line}"));
        }
    }
    problems
}

#[test]
fn the_image_pins_every_base_by_digest_and_runs_no_fetched_script() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Dockerfile");
    let text = std::fs::read_to_string(path).unwrap();
    let problems = dockerfile_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}");

    let by_tag = text.replacen(
        "rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1",
        "rust:1.95-bookworm",
        1,
    );
    assert_ne!(by_tag, text);
    assert_caught(&dockerfile_problems(&by_tag), "not pinned by digest");
    let installer =
        format!("{text}\nRUN curl --proto '=https' -sSf https://installer.example | sh -s -- -y\n");
    assert_caught(&dockerfile_problems(&installer), "piped into a shell");
    let new_base = format!("{text}\nFROM debian:bookworm-slim AS extra\n");
    assert_caught(&dockerfile_problems(&new_base), "not pinned by digest");
}
