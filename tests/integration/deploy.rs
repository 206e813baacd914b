//! The deployment examples: the systemd unit verifies, and the Kubernetes manifest parses as
//! YAML and names only fields of the Kubernetes API types it uses.
//!
//! Both need a tool this crate does not depend on (`systemd-analyze`; `python3` with PyYAML,
//! to parse YAML without a YAML crate); without it the test says so on stderr and checks
//! nothing more.

use super::support::BIN;
use serde_json::Value;
use std::process::Command;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes.yaml");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/compute_ctl.service");

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
        return;
    }
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains("\nType=notify\n") && text.contains("\nWatchdogSec="), "{text}");
    // `verify` wants the ExecStart binary to exist: point it at the one just built.
    let dir = super::support::TestDir::new("systemd-unit");
    let unit = dir.join("compute_ctl.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/compute_ctl", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown or misspelt key is only a warning, so any output at all fails the test.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// The YAML documents as JSON, through PyYAML's safe loader; None without python3 + PyYAML.
fn yaml_documents(path: &str) -> Option<Vec<Value>> {
    let script = "import sys, json, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3").args(["-c", script, path]).output().ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named 'yaml'"), "{path} does not parse as YAML: {err}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The fields of each Kubernetes API type the manifest uses (from the API reference, v1.30),
/// with the type of each field's value: `-` for a scalar, `{}` for a map of strings, a
/// leading `[]` for a list.
const TYPES: &[(&str, &[(&str, &str)])] = &[
    ("ObjectMeta", &[("name", "-"), ("namespace", "-"), ("labels", "{}"), ("annotations", "{}")]),
    (
        "ConfigMap",
        &[
            ("apiVersion", "-"),
            ("kind", "-"),
            ("metadata", "ObjectMeta"),
            ("data", "{}"),
            ("binaryData", "{}"),
            ("immutable", "-"),
        ],
    ),
    (
        "Secret",
        &[
            ("apiVersion", "-"),
            ("kind", "-"),
            ("metadata", "ObjectMeta"),
            ("type", "-"),
            ("data", "{}"),
            ("stringData", "{}"),
            ("immutable", "-"),
        ],
    ),
    ("Service", &[("apiVersion", "-"), ("kind", "-"), ("metadata", "ObjectMeta"), ("spec", "ServiceSpec")]),
    (
        "ServiceSpec",
        &[
            ("clusterIP", "-"),
            ("selector", "{}"),
            ("ports", "[]ServicePort"),
            ("type", "-"),
            ("publishNotReadyAddresses", "-"),
        ],
    ),
    ("ServicePort", &[("name", "-"), ("port", "-"), ("targetPort", "-"), ("protocol", "-"), ("appProtocol", "-")]),
    ("StatefulSet", &[("apiVersion", "-"), ("kind", "-"), ("metadata", "ObjectMeta"), ("spec", "StatefulSetSpec")]),
    (
        "StatefulSetSpec",
        &[
            ("serviceName", "-"),
            ("replicas", "-"),
            ("selector", "LabelSelector"),
            ("template", "PodTemplateSpec"),
            ("volumeClaimTemplates", "[]PersistentVolumeClaim"),
            ("podManagementPolicy", "-"),
            ("minReadySeconds", "-"),
        ],
    ),
    ("LabelSelector", &[("matchLabels", "{}")]),
    ("PodTemplateSpec", &[("metadata", "ObjectMeta"), ("spec", "PodSpec")]),
    (
        "PodSpec",
        &[
            ("containers", "[]Container"),
            ("initContainers", "[]Container"),
            ("volumes", "[]Volume"),
            ("terminationGracePeriodSeconds", "-"),
            ("securityContext", "PodSecurityContext"),
            ("enableServiceLinks", "-"),
            ("automountServiceAccountToken", "-"),
            ("serviceAccountName", "-"),
        ],
    ),
    (
        "PodSecurityContext",
        &[
            ("fsGroup", "-"),
            ("fsGroupChangePolicy", "-"),
            ("runAsUser", "-"),
            ("runAsGroup", "-"),
            ("runAsNonRoot", "-"),
            ("seccompProfile", "SeccompProfile"),
        ],
    ),
    ("SeccompProfile", &[("type", "-"), ("localhostProfile", "-")]),
    (
        "Container",
        &[
            ("name", "-"),
            ("image", "-"),
            ("imagePullPolicy", "-"),
            ("command", "[]-"),
            ("args", "[]-"),
            ("env", "[]EnvVar"),
            ("ports", "[]ContainerPort"),
            ("startupProbe", "Probe"),
            ("livenessProbe", "Probe"),
            ("readinessProbe", "Probe"),
            ("lifecycle", "Lifecycle"),
            ("resources", "ResourceRequirements"),
            ("securityContext", "SecurityContext"),
            ("volumeMounts", "[]VolumeMount"),
            ("terminationMessagePolicy", "-"),
        ],
    ),
    ("EnvVar", &[("name", "-"), ("value", "-")]),
    ("ContainerPort", &[("name", "-"), ("containerPort", "-"), ("protocol", "-")]),
    (
        "Probe",
        &[
            ("httpGet", "HTTPGetAction"),
            ("exec", "ExecAction"),
            ("initialDelaySeconds", "-"),
            ("periodSeconds", "-"),
            ("timeoutSeconds", "-"),
            ("successThreshold", "-"),
            ("failureThreshold", "-"),
        ],
    ),
    ("HTTPGetAction", &[("path", "-"), ("port", "-"), ("host", "-"), ("scheme", "-")]),
    ("ExecAction", &[("command", "[]-")]),
    ("Lifecycle", &[("preStop", "LifecycleHandler"), ("postStart", "LifecycleHandler")]),
    ("LifecycleHandler", &[("exec", "ExecAction"), ("httpGet", "HTTPGetAction")]),
    ("ResourceRequirements", &[("requests", "{}"), ("limits", "{}")]),
    (
        "SecurityContext",
        &[
            ("allowPrivilegeEscalation", "-"),
            ("readOnlyRootFilesystem", "-"),
            ("capabilities", "Capabilities"),
            ("runAsUser", "-"),
            ("runAsNonRoot", "-"),
            ("privileged", "-"),
        ],
    ),
    ("Capabilities", &[("add", "[]-"), ("drop", "[]-")]),
    ("VolumeMount", &[("name", "-"), ("mountPath", "-"), ("subPath", "-"), ("readOnly", "-")]),
    (
        "Volume",
        &[
            ("name", "-"),
            ("configMap", "ConfigMapVolumeSource"),
            ("secret", "SecretVolumeSource"),
            ("emptyDir", "EmptyDirVolumeSource"),
            ("persistentVolumeClaim", "PVCVolumeSource"),
        ],
    ),
    ("ConfigMapVolumeSource", &[("name", "-"), ("defaultMode", "-"), ("optional", "-")]),
    ("SecretVolumeSource", &[("secretName", "-"), ("defaultMode", "-"), ("optional", "-")]),
    ("EmptyDirVolumeSource", &[("medium", "-"), ("sizeLimit", "-")]),
    ("PVCVolumeSource", &[("claimName", "-"), ("readOnly", "-")]),
    ("PersistentVolumeClaim", &[("metadata", "ObjectMeta"), ("spec", "PersistentVolumeClaimSpec")]),
    (
        "PersistentVolumeClaimSpec",
        &[("accessModes", "[]-"), ("resources", "VolumeResourceRequirements"), ("storageClassName", "-")],
    ),
    ("VolumeResourceRequirements", &[("requests", "{}"), ("limits", "{}")]),
];

/// Every field name under `value` (of API type `ty`) that the type does not have.
fn unknown_fields(value: &Value, ty: &str, path: &str, out: &mut Vec<String>) {
    if ty == "-" {
        assert!(!value.is_object() && !value.is_array(), "{path}: expected a scalar, got {value}");
        return;
    }
    if ty == "{}" {
        let map = value.as_object().unwrap_or_else(|| panic!("{path}: expected a map, got {value}"));
        assert!(map.values().all(|v| v.is_string()), "{path}: every value must be a string: {value}");
        return;
    }
    if let Some(item) = ty.strip_prefix("[]") {
        let list = value.as_array().unwrap_or_else(|| panic!("{path}: expected a list, got {value}"));
        for (i, v) in list.iter().enumerate() {
            unknown_fields(v, item, &format!("{path}[{i}]"), out);
        }
        return;
    }
    let fields = TYPES.iter().find(|(t, _)| *t == ty).unwrap_or_else(|| panic!("no type {ty}")).1;
    let map = value.as_object().unwrap_or_else(|| panic!("{path}: expected an object of type {ty}, got {value}"));
    for (k, v) in map {
        match fields.iter().find(|(f, _)| f == k) {
            Some((_, t)) => unknown_fields(v, t, &format!("{path}.{k}"), out),
            None => out.push(format!("{path}.{k} (not a field of {ty})")),
        }
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
}

#[test]
fn kubernetes_manifest_uses_real_fields() {
    let Some(docs) = yaml_documents(MANIFEST) else {
        eprintln!("python3 with PyYAML is not available: the manifest is not checked");
        return;
    };
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Secret", "Service", "StatefulSet"]);
    let mut unknown = Vec::new();
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        unknown_fields(d, kind, kind, &mut unknown);
    }
    assert!(unknown.is_empty(), "fields that are not in the Kubernetes API: {unknown:#?}");

    // The field check above also catches a mistyped name in the check itself: a wrong table
    // entry fails it.
    let mut probe = Vec::new();
    unknown_fields(&serde_json::json!({"livenessProbe": {"httpGet": {"paht": "/x"}}}), "Container", "c", &mut probe);
    assert_eq!(probe, ["c.livenessProbe.httpGet.paht (not a field of HTTPGetAction)"]);

    // What the manifest is for.
    let spec_json = docs[0]["data"]["spec.json"].as_str().unwrap();
    compute_ctl::spec::ParsedSpec::parse(spec_json).expect("the ConfigMap's spec is valid");
    assert!(docs[1]["stringData"]["http-auth-token"].is_string());
    let pod = &docs[3]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    for (probe, path) in [("startupProbe", "/startupz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let args = strings(&c["args"]);
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"].as_str().unwrap();
    assert_eq!(after("-S"), mount("spec"), "the spec is read from the ConfigMap");
    assert!(after("--http-auth-token-file").starts_with(mount("secrets")), "the token is read from the Secret");
    let pre_stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    // The internal API, on loopback: it takes the token file but needs no JWT.
    assert_eq!(&pre_stop[1..3], ["--terminate", "3081"]);
    // The grace period covers the bounded checkpoint and leaves at least 30 s for the rest.
    let checkpoint: u64 = after("--pre-stop-checkpoint").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= checkpoint + 30, "grace {grace} s, checkpoint bound {checkpoint} s");
    // Every argument the manifest gives compute_ctl parses.
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    compute_ctl::args::parse(&argv, |_| None).expect("the container's arguments parse");
    let argv: Vec<String> = pre_stop[1..].iter().map(|s| s.to_string()).collect();
    compute_ctl::args::parse(&argv, |_| None).expect("the preStop arguments parse");
}
