#!/usr/bin/env bash
# Checks the Helm chart charts/trellis, offline:
#
#   1. the Grafana dashboards (charts/trellis/dashboards/*.json) and
#      values.schema.json are valid JSON; every dashboard query is valid
#      PromQL (`promtool check rules`, when promtool is installed);
#   2. the policy CRD in charts/trellis/crds/ equals what the current
#      `trellis-controller crd` prints (the controller and the CLI are built
#      with cargo, target dir $CARGO_TARGET_DIR, default
#      /var/cache/trellis/target);
#   3. for every profile (default values, values-ha.yaml,
#      values-mtls-only.yaml, ci/*-values.yaml,
#      a provided CA made here with openssl): `helm lint --strict`, then
#      `helm template --include-crds`, then every rendered manifest is
#      validated with kubernetes-validate in strict mode against Kubernetes
#      $KUBE_VERSION (1.33: native sidecars, 1.29+). Kinds that are custom
#      resources without a bundled schema (SKIP_KINDS below) are only checked
#      to parse and to have apiVersion, kind and metadata.name, and each is
#      listed as skipped. Invariants of the chart are checked too
#      (security contexts, probes, env names, RBAC rules, the identity's
#      token verifier (TokenReview), the webhook, the CNI installer's
#      DaemonSet and its least privilege (with cni.enabled), the
#      injector config's keys, generated certificates), and each profile's
#      injector config (the ConfigMap's config.yaml) is fed to the
#      injector's own logic, `trellis inject --config ... --strict`, on a
#      sample Deployment, whose output is validated in turn;
#   4. bad values (an unknown key, failurePolicy=Sometimes, …) make
#      `helm template` fail with the schema's or the chart's message;
#   5. extra YAML files, with --validate-dir.
#
# Usage:
#
#   bash scripts/check-chart.sh [--validate-dir DIR]... [--validate-pattern GLOB]
#                               [--update-crd] [--no-cargo]
#
#   --validate-dir DIR      also validate every file under DIR (recursively)
#                           whose name matches --validate-pattern, e.g. the
#                           pods that `trellis inject` produced; repeatable.
#                           Every YAML document in those files must be a
#                           Kubernetes object (apiVersion, kind,
#                           metadata.name); a DIR with no matching file fails.
#   --validate-pattern GLOB file-name pattern for --validate-dir (default
#                           '*.yaml'; e.g. 'injected.yaml').
#   --update-crd            rewrite charts/trellis/crds/ from the controller
#                           binary instead of failing on a difference.
#   --no-cargo              build nothing: skip the CRD comparison and the
#                           `trellis inject` runs (says so in the summary).
#
# Tools: helm and kubernetes-validate, installed (idempotently, under
# /var/cache/trellis) by scripts/install-chart-tools.sh, which this script
# runs first. Prints progress and a summary; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=1.33
CHART=charts/trellis
RELEASE=trellis
NAMESPACE=trellis
CACHE="${TRELLIS_CACHE:-/var/cache/trellis}"
HELM="${TRELLIS_TOOLS_BIN:-$CACHE/tools/bin}/helm"
VENV="${TRELLIS_CHART_VENV:-$CACHE/chart-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
CRD_FILE="$CHART/crds/authorizationpolicies.policy.trellis.dev.yaml"

# Custom resources whose schemas kubernetes-validate does not bundle: parsed
# and checked for apiVersion/kind/metadata.name only, and listed as skipped.
SKIP_KINDS=(
  cert-manager.io/v1/Certificate
  cert-manager.io/v1/Issuer
  cert-manager.io/v1/ClusterIssuer
  monitoring.coreos.com/v1/ServiceMonitor
  monitoring.coreos.com/v1/PodMonitor
  policy.trellis.dev/v1alpha1/AuthorizationPolicy
)

validate_dirs=()
validate_pattern='*.yaml'
update_crd=0
no_cargo=0
while [ $# -gt 0 ]; do
  case "$1" in
    --validate-dir) [ $# -ge 2 ] || { echo "--validate-dir needs a directory" >&2; exit 2; }
                    validate_dirs+=("$2"); shift 2 ;;
    --validate-dir=*) validate_dirs+=("${1#*=}"); shift ;;
    --validate-pattern) [ $# -ge 2 ] || { echo "--validate-pattern needs a glob" >&2; exit 2; }
                        validate_pattern=$2; shift 2 ;;
    --validate-pattern=*) validate_pattern=${1#*=}; shift ;;
    --update-crd) update_crd=1; shift ;;
    --no-cargo) no_cargo=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-chart: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
failures=()
fail() { printf '    FAIL: %s\n' "$*"; failures+=("$*"); }
started=$(date +%s)

step "tools (scripts/install-chart-tools.sh)"
bash scripts/install-chart-tools.sh
PY="$VENV/bin/python"
say "$("$HELM" version --short), kubernetes-validate $("$PY" -c 'from importlib.metadata import version; print(version("kubernetes-validate"))'), Kubernetes schemas $KUBE_VERSION (strict)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-chart.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------
# The validator: kubernetes-validate as a library, plus the chart's own
# invariants. Reads rendered manifests; prints one line per object.
# ---------------------------------------------------------------------------
cat >"$WORK/validate.py" <<'PYEOF'
import argparse, base64, json, os, subprocess, sys, tempfile
import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv

ap = argparse.ArgumentParser()
ap.add_argument("--kube-version", required=True)
ap.add_argument("--skip", action="append", default=[])
ap.add_argument("--label", required=True)
ap.add_argument("--chart-invariants", action="store_true")
ap.add_argument("--counts", required=True, help="append 'label validated skipped failed' here")
ap.add_argument("files", nargs="+")
a = ap.parse_args()

SKIP = set(a.skip)
validated = skipped = 0
problems = []

def where(doc, path):
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return "%s %s%s (%s)" % (doc.get("kind"), (ns + "/") if ns else "", md.get("name") or md.get("generateName"), os.path.basename(path))

def problem(msg):
    problems.append(msg)
    print("    FAIL: " + msg)

docs = []
for path in a.files:
    try:
        with open(path) as f:
            loaded = list(yaml.safe_load_all(f))
    except yaml.YAMLError as e:
        problem("%s: not YAML: %s" % (path, e))
        continue
    # A v1 List stands for its items (kubectl applies each).
    flat = []
    for doc in loaded:
        if isinstance(doc, dict) and doc.get("apiVersion") == "v1" and doc.get("kind") == "List":
            flat.extend(doc.get("items") or [])
        else:
            flat.append(doc)
    n = 0
    for doc in flat:
        if doc is None:
            continue
        n += 1
        # metadata.generateName stands for a name in pods as the API
        # server receives them from controllers (and as `trellis inject`
        # prints those).
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                or not isinstance(doc.get("metadata"), dict) \
                or not (doc["metadata"].get("name") or doc["metadata"].get("generateName")):
            problem("%s: document %d is not a Kubernetes object (needs apiVersion, kind, metadata.name)" % (path, n))
            continue
        docs.append((path, doc))
    if n == 0:
        problem("%s: no YAML document in it" % path)

for path, doc in docs:
    key = "%s/%s" % (doc["apiVersion"], doc["kind"])
    if key in SKIP:
        skipped += 1
        print("    skipped (custom resource, no bundled schema; parsed, has apiVersion/kind/metadata.name): " + where(doc, path))
        continue
    try:
        kubernetes_validate.validate(doc, a.kube_version, strict=True)
        validated += 1
    except kv.SchemaNotFoundError as e:
        problem("%s: no schema for %s in Kubernetes %s (a typo, or a custom resource to list in SKIP_KINDS)" % (where(doc, path), key, a.kube_version))
    except kv.ValidationError as e:
        p = "/".join(str(x) for x in e.path)
        problem("%s: at %s: %s" % (where(doc, path), p or "(top)", e.message))

# ---------------------------------------------------------------------------
# The chart's invariants (rendered chart only)
# ---------------------------------------------------------------------------
def check(cond, msg):
    if not cond:
        problem(msg)

ENV = {
    "trellis-identity": {
        "TRELLIS_IDENTITY_LISTEN", "TRELLIS_IDENTITY_ADMIN_LISTEN", "TRELLIS_IDENTITY_TRUST_DOMAIN",
        "TRELLIS_IDENTITY_ISSUER_CERT_FILE", "TRELLIS_IDENTITY_ISSUER_KEY_FILE",
        "TRELLIS_IDENTITY_TRUST_ROOTS_FILE", "TRELLIS_IDENTITY_TOKEN_VERIFIER",
        "TRELLIS_IDENTITY_AUDIENCE", "TRELLIS_IDENTITY_CERT_LIFETIME", "TRELLIS_IDENTITY_CLOCK_SKEW",
        "TRELLIS_IDENTITY_CLIENT_RATE", "TRELLIS_IDENTITY_CLIENT_BURST",
        "TRELLIS_IDENTITY_MAX_CONCURRENT_VERIFICATIONS", "TRELLIS_IDENTITY_REFUSAL_CACHE_TTL",
        "TRELLIS_IDENTITY_NAMESPACE", "TRELLIS_IDENTITY_SERVICE_ACCOUNT",
        "TRELLIS_IDENTITY_LOG", "TRELLIS_IDENTITY_LOG_FORMAT"},
    "trellis-controller": {
        "TRELLIS_CONTROLLER_SOURCE", "TRELLIS_CONTROLLER_LISTEN", "TRELLIS_CONTROLLER_ADMIN_LISTEN",
        "TRELLIS_CONTROLLER_TRUST_DOMAIN", "TRELLIS_CONTROLLER_CLUSTER_DOMAIN",
        "TRELLIS_CONTROLLER_DEFAULT_INBOUND_POLICY", "TRELLIS_CONTROLLER_NAMESPACE",
        "TRELLIS_CONTROLLER_TRUST_ROOTS_CONFIGMAP", "TRELLIS_CONTROLLER_DISTRIBUTE_TRUST_ROOTS",
        "TRELLIS_CONTROLLER_TRUST_ROOTS_OWNER",
        "TRELLIS_CONTROLLER_LOG", "TRELLIS_CONTROLLER_LOG_FORMAT"},
    "trellis-injector": {
        "TRELLIS_INJECTOR_LISTEN", "TRELLIS_INJECTOR_ADMIN_LISTEN", "TRELLIS_INJECTOR_TLS_CERT_FILE",
        "TRELLIS_INJECTOR_TLS_KEY_FILE", "TRELLIS_INJECTOR_CONFIG_FILE",
        "TRELLIS_INJECTOR_LOG", "TRELLIS_INJECTOR_LOG_FORMAT"},
}
PORTS = {"trellis-identity": (7155, 7195), "trellis-controller": (7156, 7196), "trellis-injector": (7157, 7197)}
RULES = {
    "trellis-identity": [("authentication.k8s.io", {"tokenreviews"}, {"create"})],
    "trellis-injector": [("", {"namespaces"}, {"get", "list", "watch"})],
    "trellis-controller": [
        ("", {"namespaces", "pods", "services"}, {"get", "list", "watch"}),
        ("discovery.k8s.io", {"endpointslices"}, {"get", "list", "watch"}),
        ("gateway.networking.k8s.io", {"httproutes", "grpcroutes"}, {"get", "list", "watch"}),
        # route status (controller/src/status.rs): merge patches only
        ("gateway.networking.k8s.io", {"httproutes/status", "grpcroutes/status"}, {"patch"}),
        ("policy.trellis.dev", {"authorizationpolicies"}, {"get", "list", "watch"}),
        # the trust roots copies (controller.distributeTrustRoots): by name
        # where Kubernetes allows it; their owner, the controller's own
        # ClusterRole, watched by name
        ("", {"configmaps"}, {"list", "watch", "patch", "delete"}, ["trellis-trust-roots"]),
        ("", {"configmaps"}, {"create"}),
        ("rbac.authorization.k8s.io", {"clusterroles"}, {"list", "watch"}, ["trellis-controller"])],
}
# injector/src/config.rs, InjectorConfig (camelCase, deny_unknown_fields)
INJECTOR_CONFIG_KEYS = {
    "": {"controlPlaneNamespace", "trustDomain", "excludedNamespaces", "proxy", "init", "floor"},
    "proxy": {"image", "imagePullPolicy", "version", "nativeSidecar", "logLevel", "resources",
              "identityAddr", "identityServerId", "controllerAddr", "trustRootsConfigMap",
              "defaultInboundPolicy", "outboundMtls", "plaintextDestinations", "opaquePorts",
              "tokenExpirationSeconds", "tracing"},
    "proxy.resources": {"cpuRequest", "memoryRequest", "cpuLimit", "memoryLimit"},
    "proxy.tracing": {"collector", "sampling"},
    "init": {"captureMode", "image", "runAsRoot", "iptablesMode"},
}
# injector/src/floor.rs, FloorConfig: only the fields a profile sets
INJECTOR_FLOOR_KEYS = {"enforcement", "defaultInboundPolicy", "outboundMtls", "skipInboundPorts",
                       "skipOutboundPorts", "allowOptOut"}

def find(kind, name, ns=None):
    for _, d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name and (ns is None or d["metadata"].get("namespace") == ns):
            return d
    return None

def openssl(*args, data=None):
    r = subprocess.run(["openssl", *args], input=data, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr

if a.chart_invariants:
    ns = None
    for name, env_names in ENV.items():
        d = find("Deployment", name)
        if d is None:
            problem("Deployment %s missing" % name)
            continue
        ns = d["metadata"].get("namespace")
        pod = d["spec"]["template"]["spec"]
        check(pod.get("serviceAccountName") == name, "%s: serviceAccountName %r" % (name, pod.get("serviceAccountName")))
        psc = pod.get("securityContext") or {}
        check(psc.get("runAsNonRoot") is True and (psc.get("runAsUser") or 0) > 0, "%s: pod must run as a non-root uid" % name)
        check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "%s: pod seccompProfile RuntimeDefault" % name)
        ann = d["spec"]["template"]["metadata"].get("annotations") or {}
        if "prometheus.io/scrape" in ann:
            check(ann.get("prometheus.io/port") == str(PORTS[name][1]) and ann.get("prometheus.io/path") == "/metrics",
                  "%s: prometheus.io/port must be its admin port %d" % (name, PORTS[name][1]))
        if name == "trellis-injector":
            check("checksum/config" in ann, "trellis-injector: checksum/config annotation (rolls on config change)")
        for c in pod["containers"]:
            sc = c.get("securityContext") or {}
            check(sc.get("readOnlyRootFilesystem") is True, "%s/%s: readOnlyRootFilesystem" % (name, c["name"]))
            check(sc.get("allowPrivilegeEscalation") is False, "%s/%s: allowPrivilegeEscalation false" % (name, c["name"]))
            check(sc.get("runAsNonRoot") is True, "%s/%s: runAsNonRoot" % (name, c["name"]))
            check((sc.get("capabilities") or {}).get("drop") == ["ALL"] and not (sc.get("capabilities") or {}).get("add"),
                  "%s/%s: capabilities drop ALL, add none" % (name, c["name"]))
            check((sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "%s/%s: seccompProfile RuntimeDefault" % (name, c["name"]))
            check(((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path") == "/ready", "%s/%s: readiness probe /ready" % (name, c["name"]))
            check(((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path") == "/live", "%s/%s: liveness probe /live" % (name, c["name"]))
            check(bool((c.get("resources") or {}).get("requests")), "%s/%s: resource requests" % (name, c["name"]))
            ports = sorted(p["containerPort"] for p in c.get("ports") or [])
            check(ports == sorted(PORTS[name]), "%s/%s: ports %s, want %s" % (name, c["name"], ports, sorted(PORTS[name])))
            names = {e["name"] for e in c.get("env") or []}
            check(names == env_names, "%s/%s: env %s" % (name, c["name"],
                  "; ".join(x for x in ["missing " + ",".join(sorted(env_names - names)) if env_names - names else "",
                                       "unexpected " + ",".join(sorted(names - env_names)) if names - env_names else ""] if x)))
        sa = find("ServiceAccount", name, ns)
        check(sa is not None, "ServiceAccount %s missing" % name)
        svc = find("Service", name, ns)
        check(svc is not None and svc["spec"].get("type", "ClusterIP") == "ClusterIP", "Service %s (ClusterIP) missing" % name)
        # RBAC: exactly these rules (least privilege), bound to the component's own ServiceAccount
        role = find("ClusterRole", name)
        if role is None:
            problem("ClusterRole %s missing" % name)
        else:
            got = sorted((tuple(r.get("apiGroups")), tuple(sorted(r.get("resources"))), tuple(sorted(r.get("verbs"))), tuple(r.get("resourceNames") or ())) for r in role.get("rules") or [])
            want = sorted(((rule[0],), tuple(sorted(rule[1])), tuple(sorted(rule[2])), tuple(rule[3] if len(rule) > 3 else ())) for rule in RULES[name])
            check(got == want, "ClusterRole %s rules %s, want %s" % (name, got, want))
            check(not any(r.get("resourceNames") is None and "secrets" in r.get("resources", []) for r in role.get("rules") or []),
                  "ClusterRole %s must not read Secrets" % name)
        crb = find("ClusterRoleBinding", name)
        check(crb is not None and crb["roleRef"]["name"] == name and crb["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
              "ClusterRoleBinding %s must bind ClusterRole %s to ServiceAccount %s/%s only" % (name, name, ns, name))
    # Namespaced grants: only the CNI installer's read of its own DaemonSet
    # (checked exactly below).
    for _, d in docs:
        if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] != "trellis-cni":
            problem("unexpected %s %s: the chart grants cluster roles listed in RULES, and the CNI installer's Role, only" % (d["kind"], d["metadata"]["name"]))
    # the injector service: 443 -> 7157
    svc = find("Service", "trellis-injector", ns)
    if svc:
        check(any(p["port"] == 443 and p.get("targetPort") in (7157, "https") for p in svc["spec"]["ports"]), "Service trellis-injector: port 443 -> 7157")
    for name in ("trellis-identity", "trellis-controller"):
        svc = find("Service", name, ns)
        if svc:
            check(any(p.get("appProtocol") == "grpc" and p["port"] == PORTS[name][0] for p in svc["spec"]["ports"]),
                  "Service %s: port %d with appProtocol grpc" % (name, PORTS[name][0]))
    # the webhook
    mwc = find("MutatingWebhookConfiguration", "trellis-injector")
    if mwc is None:
        problem("MutatingWebhookConfiguration trellis-injector missing")
    else:
        whs = mwc["webhooks"]
        check(len(whs) == 1 and whs[0]["name"] == "inject.trellis.dev", "one webhook inject.trellis.dev")
        wh = whs[0]
        cc = wh["clientConfig"]["service"]
        check(cc == {"name": "trellis-injector", "namespace": ns, "path": "/inject", "port": 443}, "webhook service %s" % cc)
        check(wh["rules"][0]["operations"] == ["CREATE"] and wh["rules"][0]["resources"] == ["pods"] and wh["rules"][0]["apiVersions"] == ["v1"], "webhook rules: pods CREATE v1")
        check(wh["admissionReviewVersions"] == ["v1"] and wh["sideEffects"] == "None" and wh["reinvocationPolicy"] == "Never", "webhook admissionReviewVersions/sideEffects/reinvocationPolicy")
        check(wh["failurePolicy"] in ("Ignore", "Fail"), "webhook failurePolicy")
        exprs = {e["key"]: e for e in wh["namespaceSelector"]["matchExpressions"]}
        names = exprs.get("kubernetes.io/metadata.name", {})
        check(names.get("operator") == "NotIn" and {"kube-system", ns} <= set(names.get("values", [])), "webhook namespaceSelector must exclude kube-system and %s" % ns)
        lab = exprs.get("trellis.dev/admission-webhooks", {})
        check(lab.get("operator") == "NotIn" and lab.get("values") == ["disabled"], "webhook namespaceSelector must exclude trellis.dev/admission-webhooks=disabled")
        inject_ca = (mwc["metadata"].get("annotations") or {}).get("cert-manager.io/inject-ca-from")
        bundle = wh["clientConfig"].get("caBundle")
        check(bool(inject_ca) != bool(bundle), "webhook: exactly one of caBundle and cert-manager.io/inject-ca-from")
        tls = find("Secret", "trellis-injector-tls", ns)
        if bundle:
            if tls is None:
                problem("Secret trellis-injector-tls missing (generated webhook certificate)")
            else:
                check(tls["type"] == "kubernetes.io/tls", "Secret trellis-injector-tls type kubernetes.io/tls")
                check(tls["data"]["ca.crt"] == bundle, "webhook caBundle must be the Secret's ca.crt")
                with tempfile.TemporaryDirectory() as t:
                    for k in ("ca.crt", "tls.crt"):
                        with open(os.path.join(t, k), "wb") as f:
                            f.write(base64.b64decode(tls["data"][k]))
                    rc, out = openssl("verify", "-CAfile", os.path.join(t, "ca.crt"), "-purpose", "sslserver", os.path.join(t, "tls.crt"))
                    check(rc == 0, "injector certificate does not verify against the caBundle: " + out.strip())
                    rc, out = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", os.path.join(t, "tls.crt"))
                    check("DNS:trellis-injector.%s.svc" % ns in out, "injector certificate lacks DNS:trellis-injector.%s.svc: %s" % (ns, out.strip()))
        elif inject_ca:
            check(inject_ca == "%s/trellis-injector-tls" % ns, "inject-ca-from %s" % inject_ca)
            check(find("Certificate", "trellis-injector-tls", ns) is not None, "Certificate trellis-injector-tls missing")
    # the injector's config
    cm = find("ConfigMap", "trellis-injector-config", ns)
    if cm is None:
        problem("ConfigMap trellis-injector-config missing")
    else:
        cfg = yaml.safe_load(cm["data"]["config.yaml"])
        def keys(obj, prefix):
            want = INJECTOR_CONFIG_KEYS[prefix]
            check(set(obj) == want, "injector config %s keys %s, want %s" % (prefix or "(top)", sorted(obj), sorted(want)))
        keys(cfg, ""); keys(cfg["proxy"], "proxy"); keys(cfg["proxy"]["resources"], "proxy.resources"); keys(cfg["init"], "init")
        check(set(cfg["floor"] or {}) <= INJECTOR_FLOOR_KEYS, "injector config floor keys %s, want a subset of %s" % (sorted(cfg["floor"] or {}), sorted(INJECTOR_FLOOR_KEYS)))
        check(cfg["controlPlaneNamespace"] == ns, "injector config controlPlaneNamespace")
        check(cfg["proxy"]["identityAddr"].startswith("trellis-identity.%s.svc." % ns) and cfg["proxy"]["identityAddr"].endswith(":7155"), "identityAddr %s" % cfg["proxy"]["identityAddr"])
        check(cfg["proxy"]["controllerAddr"].startswith("trellis-controller.%s.svc." % ns) and cfg["proxy"]["controllerAddr"].endswith(":7156"), "controllerAddr %s" % cfg["proxy"]["controllerAddr"])
        check(cfg["proxy"]["trustRootsConfigMap"] == "trellis-trust-roots", "trustRootsConfigMap")
        ctl = find("Deployment", "trellis-controller")
        if ctl:
            env = {e["name"]: e.get("value") for e in ctl["spec"]["template"]["spec"]["containers"][0]["env"]}
            check(env.get("TRELLIS_CONTROLLER_DEFAULT_INBOUND_POLICY") == cfg["proxy"]["defaultInboundPolicy"],
                  "controller and injector must agree on the default inbound policy")
            # helm uninstall removes the trust roots copies only if their
            # owner is a ClusterRole the chart makes (and the controller may watch)
            owner = env.get("TRELLIS_CONTROLLER_TRUST_ROOTS_OWNER")
            check(find("ClusterRole", owner) is not None,
                  "TRELLIS_CONTROLLER_TRUST_ROOTS_OWNER %s is not a ClusterRole of the chart" % owner)
    # the CA
    roots = find("ConfigMap", "trellis-trust-roots", ns)
    check(roots is not None and "BEGIN CERTIFICATE" in roots["data"].get("roots.pem", ""), "ConfigMap trellis-trust-roots with roots.pem")
    issuer = find("Secret", "trellis-identity-issuer", ns)
    ident = find("Deployment", "trellis-identity")
    vols = {v["name"]: v for v in ident["spec"]["template"]["spec"]["volumes"]} if ident else {}
    # Tokens are verified by TokenReview in every profile: the API server
    # also refuses the token of a deleted pod; jwks would not (values.yaml).
    if ident:
        ienv = {e["name"]: e.get("value") for e in ident["spec"]["template"]["spec"]["containers"][0].get("env") or []}
        check(ienv.get("TRELLIS_IDENTITY_TOKEN_VERIFIER") == "kubernetes",
              "trellis-identity: TRELLIS_IDENTITY_TOKEN_VERIFIER %r, want kubernetes (TokenReview)" % ienv.get("TRELLIS_IDENTITY_TOKEN_VERIFIER"))
    if issuer is not None:
        crt = base64.b64decode(issuer["data"]["issuer.crt"]).decode()
        key = base64.b64decode(issuer["data"]["issuer.key"]).decode()
        check("PRIVATE KEY" in key, "issuer.key is a private key PEM")
        if (issuer["metadata"].get("annotations") or {}).get("trellis.dev/issuer-mode") == "generate":
            check(roots is not None and roots["data"]["roots.pem"].strip() == crt.strip(), "generate: roots.pem must be the generated root (issuer.crt)")
            rc, out = openssl("x509", "-noout", "-text", data=crt)
            check(rc == 0 and "CA:TRUE" in out and "prime256v1" in out, "generate: issuer.crt must be an ECDSA P-256 CA certificate")
        else:
            with tempfile.TemporaryDirectory() as t:
                with open(os.path.join(t, "roots.pem"), "w") as f:
                    f.write(roots["data"]["roots.pem"])
                with open(os.path.join(t, "issuer.crt"), "w") as f:
                    f.write(crt)
                rc, out = openssl("verify", "-CAfile", os.path.join(t, "roots.pem"), os.path.join(t, "issuer.crt"))
                check(rc == 0, "provided: issuer.crt does not chain to roots.pem: " + out.strip())
        check("items" not in vols.get("issuer", {}).get("secret", {}), "identity mounts issuer.crt/issuer.key as they are")
    else:
        cert = find("Certificate", "trellis-identity-issuer", ns)
        check(cert is not None, "neither Secret nor Certificate trellis-identity-issuer")
        if cert:
            spec = cert["spec"]
            check(spec.get("isCA") is True and spec.get("secretName") == "trellis-identity-issuer", "identity Certificate: isCA, secretName")
            check(spec.get("privateKey") == {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"}, "identity Certificate: ECDSA 256 PKCS8")
            items = vols.get("issuer", {}).get("secret", {}).get("items") or []
            check({(i["key"], i["path"]) for i in items} == {("tls.crt", "issuer.crt"), ("tls.key", "issuer.key")},
                  "certManager: the identity must mount tls.crt/tls.key as issuer.crt/issuer.key")
    # The CNI plugin's installer (cni.enabled): present exactly when the
    # injector is in CNI mode; least privilege for what it does (copy a
    # binary and edit a conflist in two host directories).
    ds = find("DaemonSet", "trellis-cni", ns)
    mode = cfg["init"].get("captureMode") if cm is not None else None
    check((ds is not None) == (mode == "cni"),
          "DaemonSet trellis-cni present (%s) must go with injector captureMode cni (%r)" % (ds is not None, mode))
    if ds is not None:
        pod = ds["spec"]["template"]["spec"]
        check(pod.get("serviceAccountName") == "trellis-cni", "trellis-cni: serviceAccountName %r" % pod.get("serviceAccountName"))
        for key in ("hostPID", "hostIPC"):
            check(not pod.get(key), "trellis-cni: %s must not be set (the installer works on files only)" % key)
        check(pod.get("hostNetwork") is True,
              "trellis-cni: hostNetwork (its own pod must start even while a stale plugin fails the pod network's setup)")
        check(any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in pod.get("tolerations") or []),
              "trellis-cni: a toleration {operator: Exists} (every node, tainted or not)")
        check(pod.get("priorityClassName") == "system-node-critical", "trellis-cni: priorityClassName system-node-critical")
        vols = {v["name"]: v for v in pod.get("volumes") or []}
        check(all("hostPath" in v for v in vols.values()) and len(vols) == 2, "trellis-cni: exactly two volumes, the host's CNI directories: %s" % sorted(vols))
        cs = pod["containers"]
        check(len(cs) == 1 and not pod.get("initContainers"), "trellis-cni: one container")
        c = cs[0]
        check(c.get("command") == ["trellis-cni", "install"], "trellis-cni: command %r" % c.get("command"))
        sc = c.get("securityContext") or {}
        check(sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True,
              "trellis-cni: not privileged, no privilege escalation, read-only root filesystem")
        check((sc.get("capabilities") or {}).get("drop") == ["ALL"] and not (sc.get("capabilities") or {}).get("add"),
              "trellis-cni: capabilities drop ALL, add none (root only as the owner of the host directories)")
        check((sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "trellis-cni: seccompProfile RuntimeDefault")
        check(bool((c.get("resources") or {}).get("requests")), "trellis-cni: resource requests")
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        want_env = {"TRELLIS_CNI_BIN_DIR", "TRELLIS_CNI_CONF_DIR", "TRELLIS_CNI_HOST_CONF_DIR", "TRELLIS_CNI_LOG_LEVEL", "TRELLIS_CNI_DAEMONSET"}
        check(set(env) == want_env, "trellis-cni: env %s, want %s" % (sorted(env), sorted(want_env)))
        check(env.get("TRELLIS_CNI_DAEMONSET") == "%s/trellis-cni" % ns,
              "trellis-cni: TRELLIS_CNI_DAEMONSET %r must name its own DaemonSet %s/trellis-cni" % (env.get("TRELLIS_CNI_DAEMONSET"), ns))
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
        for var, host_key in (("TRELLIS_CNI_BIN_DIR", "bin"), ("TRELLIS_CNI_CONF_DIR", "conf")):
            name = mounts.get(env.get(var))
            check(name in vols, "trellis-cni: %s=%r is no mount of a host directory" % (var, env.get(var)))
            if host_key == "conf" and name in vols:
                check(vols[name]["hostPath"]["path"] == env.get("TRELLIS_CNI_HOST_CONF_DIR"),
                      "trellis-cni: TRELLIS_CNI_HOST_CONF_DIR %r must be the mounted host directory %r"
                      % (env.get("TRELLIS_CNI_HOST_CONF_DIR"), vols[name]["hostPath"]["path"]))
        check(find("ServiceAccount", "trellis-cni", ns) is not None, "ServiceAccount trellis-cni missing")
        role = find("ClusterRole", "trellis-cni")
        check(role is not None and role.get("rules") == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
              "ClusterRole trellis-cni must allow exactly get pods: %s" % (role or {}).get("rules"))
        crb = find("ClusterRoleBinding", "trellis-cni")
        check(crb is not None and crb["roleRef"]["name"] == "trellis-cni" and crb["subjects"] == [{"kind": "ServiceAccount", "name": "trellis-cni", "namespace": ns}],
              "ClusterRoleBinding trellis-cni must bind ClusterRole trellis-cni to ServiceAccount %s/trellis-cni only" % ns)
        role = find("Role", "trellis-cni", ns)
        check(role is not None and role.get("rules") == [{"apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": ["trellis-cni"], "verbs": ["get"]}],
              "Role trellis-cni must allow exactly get of DaemonSet trellis-cni: %s" % (role or {}).get("rules"))
        rb = find("RoleBinding", "trellis-cni", ns)
        check(rb is not None and rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trellis-cni"}
              and rb["subjects"] == [{"kind": "ServiceAccount", "name": "trellis-cni", "namespace": ns}],
              "RoleBinding trellis-cni must bind Role trellis-cni to ServiceAccount %s/trellis-cni only" % ns)
    else:
        for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            check(find(kind, "trellis-cni") is None, "%s trellis-cni without cni.enabled" % kind)
    # PodDisruptionBudgets: one per component with more than one replica
    for name in ENV:
        d = find("Deployment", name)
        pdb = find("PodDisruptionBudget", name, ns)
        if d is not None and d["spec"]["replicas"] > 1:
            check(pdb is not None, "PodDisruptionBudget %s missing (replicas %d)" % (name, d["spec"]["replicas"]))
            if pdb:
                check(pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], "PodDisruptionBudget %s selects its Deployment's pods" % name)
        elif d is not None:
            check(pdb is None, "PodDisruptionBudget %s on a single replica would block drains" % name)
    # dashboards carry valid JSON
    for _, d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("trellis-dashboard-"):
            for k, v in d["data"].items():
                try:
                    json.loads(v)
                except ValueError as e:
                    problem("%s %s: not JSON: %s" % (d["metadata"]["name"], k, e))

with open(a.counts, "a") as f:
    f.write("%s %d %d %d\n" % (a.label, validated, skipped, len(problems)))
print("    %s: %d validated (Kubernetes %s, strict), %d skipped (custom resources), %d problem(s)" % (a.label, validated, a.kube_version, skipped, len(problems)))
sys.exit(1 if problems else 0)
PYEOF

skip_args=()
for k in "${SKIP_KINDS[@]}"; do skip_args+=(--skip "$k"); done
COUNTS="$WORK/counts"
: >"$COUNTS"

# ---------------------------------------------------------------------------
step "JSON: values.schema.json and the dashboards"
n=0
for f in "$CHART/values.schema.json" "$CHART"/dashboards/*.json; do
  if out=$("$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" 2>&1); then
    n=$((n + 1))
  else
    fail "$f is not valid JSON: $out"
  fi
done
say "$n JSON files parse"
# values.schema.json is strict: every object says what else it admits
# (false, or a schema for map values), except Helm's `global`.
if out=$("$PY" - "$CHART/values.schema.json" <<'PYEOF' 2>&1
import json, sys
s = json.load(open(sys.argv[1]))
assert s.get("$schema") == "http://json-schema.org/draft-07/schema#", "not draft-07"
loose = []
def walk(node, path):
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node and path != "/properties/global":
            loose.append(path or "/")
        for k, v in node.items():
            walk(v, path + "/" + k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, "%s/%d" % (path, i))
walk(s, "")
assert not loose, "objects without additionalProperties: " + ", ".join(loose)
PYEOF
); then
  say "values.schema.json: draft-07, additionalProperties set on every object"
else
  fail "values.schema.json is not strict: $out"
fi
# Every dashboard query, with Grafana's variables replaced, must be PromQL.
"$PY" - "$WORK/dashboard-rules.yaml" "$CHART"/dashboards/*.json <<'PYEOF' || fail "dashboards: bad panels (see above)"
import json, re, sys
out, files = sys.argv[1], sys.argv[2:]
subst = {"$__rate_interval": "5m", "${datasource}": "prom", "$direction": "inbound", "$namespace": "demo",
         "$workload": "web", "$service": "web.demo.svc.cluster.local:80", "$route": "default"}
rules, uids, bad = [], set(), 0
for f in files:
    d = json.load(open(f))
    for k in ("uid", "title", "panels", "templating"):
        if k not in d:
            print("    FAIL: %s: no %s" % (f, k)); bad += 1
    if d.get("uid") in uids:
        print("    FAIL: %s: uid %s used twice" % (f, d.get("uid"))); bad += 1
    uids.add(d.get("uid"))
    used = set()
    for p in d.get("panels", []):
        for t in p.get("targets", []):
            e = t["expr"]
            used.update(re.findall(r"\$[a-z_]+", e))
            for k, v in subst.items():
                e = e.replace(k, v)
            rules.append({"record": "trellis:check:%d" % len(rules), "expr": e})
    names = {v["name"] for v in d["templating"]["list"]}
    for var in used - {"$__rate_interval"}:
        if var[1:] not in names:
            print("    FAIL: %s: query uses %s, which is no variable of the dashboard" % (f, var)); bad += 1
    for metric in ("trellis_http_requests_total", "trellis_http_request_duration_seconds_bucket"):
        if metric not in json.dumps(d):
            print("    FAIL: %s: does not use %s" % (f, metric)); bad += 1
import yaml
yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, open(out, "w"))
print("    %d dashboards, %d queries" % (len(files), len(rules)))
sys.exit(1 if bad else 0)
PYEOF
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules "$WORK/dashboard-rules.yaml" 2>&1); then
    say "promtool: every dashboard query is valid PromQL"
  else
    fail "promtool check rules on the dashboards' queries: $out"
  fi
else
  say "SKIPPED: PromQL check of the dashboards (no promtool; scripts/install-deps.sh installs it with Debian's prometheus package)"
fi

# ---------------------------------------------------------------------------
crd_status="checked"
inject_status="checked for every profile"
TRELLIS=""
if [ "$no_cargo" = 1 ]; then
  step "policy CRD: SKIPPED (--no-cargo)"
  crd_status="SKIPPED (--no-cargo)"
  inject_status="SKIPPED (--no-cargo)"
else
  step "policy CRD: $CRD_FILE against \`trellis-controller crd\`"
  say "cargo build --locked -p trellis-controller -p trellis-cli (target: $CARGO_TARGET_DIR)"
  if cargo build --quiet --locked -p trellis-controller -p trellis-cli; then
    TRELLIS="$CARGO_TARGET_DIR/debug/trellis"
    # The committed file is a comment header, then exactly the binary's output.
    "$CARGO_TARGET_DIR/debug/trellis-controller" crd >"$WORK/crd.yaml"
    awk 'header && /^#/ { next } { header = 0; print }' header=1 "$CRD_FILE" >"$WORK/crd-committed.yaml"
    if cmp -s "$WORK/crd.yaml" "$WORK/crd-committed.yaml"; then
      say "the committed CRD is the binary's current output"
    elif [ "$update_crd" = 1 ]; then
      { awk '!/^#/ { exit } { print }' "$CRD_FILE"; cat "$WORK/crd.yaml"; } >"$WORK/crd-new.yaml"
      mv "$WORK/crd-new.yaml" "$CRD_FILE"
      say "UPDATED $CRD_FILE from the binary (--update-crd); review and commit it"
      crd_status="updated"
    else
      diff -u "$WORK/crd-committed.yaml" "$WORK/crd.yaml" | head -40 | sed 's/^/    /' || true
      fail "$CRD_FILE differs from \`trellis-controller crd\`: run scripts/check-chart.sh --update-crd"
      crd_status="DIFFERS from the binary's output"
    fi
  else
    fail "cargo build -p trellis-controller -p trellis-cli failed"
    crd_status="NOT CHECKED (the build failed)"
    inject_status="NOT CHECKED (the build failed)"
  fi
fi

# ---------------------------------------------------------------------------
step "test PEMs for the provided-CA profile (openssl, temporary)"
# A root and an intermediate issuer signed by it, ECDSA P-256, PKCS#8 key:
# what an operator brings. Made here, thrown away at exit.
pki="$WORK/pki"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$pki/root.key" -out "$pki/root.pem" -days 30 \
  -subj "/CN=check-chart test root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$pki/issuer.key" -out "$pki/issuer.csr" -subj "/CN=check-chart test issuer" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$pki/ext.cnf"
openssl x509 -req -in "$pki/issuer.csr" -CA "$pki/root.pem" -CAkey "$pki/root.key" -CAcreateserial \
  -days 30 -extfile "$pki/ext.cnf" -out "$pki/issuer.crt" 2>/dev/null
openssl verify -CAfile "$pki/root.pem" "$pki/issuer.crt" >/dev/null
say "root and issuer made in $pki"

# A workload that opts in, for `trellis inject` with each profile's config.
cat >"$WORK/sample-app.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        trellis.dev/inject: enabled
    spec:
      containers:
        - name: web
          image: registry.example.com/web:1.0
          ports: [{containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
EOF

# ---------------------------------------------------------------------------
# Profiles: name, then helm arguments (values files are relative to the chart).
PROFILES=(
  "default"
  "ha|-f $CHART/values-ha.yaml"
  "mtls-only|-f $CHART/values-mtls-only.yaml"
  "cert-manager|-f $CHART/ci/cert-manager-values.yaml"
  "service-monitor|-f $CHART/ci/service-monitor-values.yaml"
  "legacy-sidecar|-f $CHART/ci/legacy-sidecar-values.yaml"
  "strict|-f $CHART/ci/strict-values.yaml"
  "provided-ca|--set identity.issuer.mode=provided --set-file identity.trustRootsPEM=$pki/root.pem --set-file identity.issuer.certPEM=$pki/issuer.crt --set-file identity.issuer.keyPEM=$pki/issuer.key"
  "ha+cert-manager+monitoring|-f $CHART/values-ha.yaml -f $CHART/ci/cert-manager-values.yaml -f $CHART/ci/service-monitor-values.yaml"
  "cni|-f $CHART/ci/cni-values.yaml"
  "strict+cni|-f $CHART/ci/strict-values.yaml -f $CHART/ci/cni-values.yaml"
)
# Every ci/*-values.yaml must be in a profile above.
for f in "$CHART"/ci/*-values.yaml; do
  case " ${PROFILES[*]} " in
    *"$f"*) ;;
    *) fail "$f is in no profile of scripts/check-chart.sh" ;;
  esac
done

for entry in "${PROFILES[@]}"; do
  name=${entry%%|*}
  args=()
  if [ "$entry" != "$name" ]; then
    # shellcheck disable=SC2206 # word splitting of the argument list is wanted
    args=(${entry#*|})
  fi
  step "profile $name: helm lint --strict, helm template, kubernetes-validate"
  if out=$("$HELM" lint --strict --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" "$CHART" "${args[@]}" 2>&1); then
    say "helm lint --strict: ok"
  else
    printf '%s\n' "$out" | sed 's/^/    /'
    fail "profile $name: helm lint --strict"
    continue
  fi
  rendered="$WORK/$name.yaml"
  if ! "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
      --include-crds "${args[@]}" >"$rendered" 2>"$WORK/err"; then
    sed 's/^/    /' "$WORK/err"
    fail "profile $name: helm template"
    continue
  fi
  say "helm template: $(grep -c '^kind:' "$rendered") objects"
  if ! "$PY" "$WORK/validate.py" --kube-version "$KUBE_VERSION" --label "$name" --counts "$COUNTS" \
      --chart-invariants "${skip_args[@]}" "$rendered"; then
    fail "profile $name: validation"
  fi
  # The injector's own parser must accept this profile's config.yaml, and
  # what it injects must be a valid workload.
  if [ -n "$TRELLIS" ]; then
    "$PY" -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "trellis-injector-config":
        sys.stdout.write(d["data"]["config.yaml"])
' "$rendered" >"$WORK/$name.injector-config.yaml"
    if "$TRELLIS" inject --strict --config "$WORK/$name.injector-config.yaml" -f "$WORK/sample-app.yaml" \
        >"$WORK/$name.injected.yaml" 2>"$WORK/err"; then
      say "trellis inject --config (this profile's config.yaml): $(tr '\n' ' ' <"$WORK/err")"
      # CNI mode: trellis-init is the check, and nothing adds a capability.
      if grep -q '^  captureMode: cni$' "$WORK/$name.injector-config.yaml"; then
        if grep -q -- '- --check' "$WORK/$name.injected.yaml" && ! grep -q 'NET_ADMIN\|NET_RAW' "$WORK/$name.injected.yaml"; then
          say "CNI mode: trellis-init runs \`trellis-proxy init --check\`, no container adds NET_ADMIN or NET_RAW"
        else
          fail "profile $name: CNI mode, yet the injected sample lacks --check or adds NET_ADMIN/NET_RAW"
        fi
      fi
      if ! "$PY" "$WORK/validate.py" --kube-version "$KUBE_VERSION" --label "inject:$name" --counts "$COUNTS" \
          "${skip_args[@]}" "$WORK/$name.injected.yaml"; then
        fail "profile $name: the injected sample Deployment is not valid"
      fi
    else
      sed 's/^/    /' "$WORK/err"
      fail "profile $name: trellis inject refused the chart's injector config"
    fi
  fi
done

# ---------------------------------------------------------------------------
step "bad values must fail helm template with a clear message"
# value arguments | the message expected in helm's output
NEGATIVE=(
  "--set injector.failurePolicy=Sometimes|at '/injector/failurePolicy': value must be one of 'Ignore', 'Fail'"
  "--set proxy.defaultInboundPolicy=open|at '/proxy/defaultInboundPolicy': value must be one of 'all-unauthenticated', 'all-authenticated', 'deny', 'audit'"
  "--set proxy.outboundMtls=sometimes|at '/proxy/outboundMtls': value must be one of 'opportunistic', 'required'"
  "--set unknownKey=1|additional properties 'unknownKey' not allowed"
  "--set injector.tls.moed=generate|at '/injector/tls': additional properties 'moed' not allowed"
  "--set identity.issuer.mode=vault|at '/identity/issuer/mode': value must be one of 'generate', 'provided', 'certManager'"
  "--set image.pullPolicy=Sometimes|at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"
  "--set-string identity.certLifetime=24|at '/identity/certLifetime': '24' does not match pattern"
  "--set-string identity.limits.clientRate=0|at '/identity/limits/clientRate': '0' does not match pattern"
  "--set identity.limits.maxConcurrentVerifications=0|at '/identity/limits/maxConcurrentVerifications': minimum: got 0, want 1"
  "--set-string proxy.resources.memoryLimit=lots|at '/proxy/resources/memoryLimit': 'lots' does not match pattern"
  "--set injector.timeoutSeconds=60|at '/injector/timeoutSeconds': maximum: got 60, want 30"
  "--set proxy.tokenExpirationSeconds=60|at '/proxy/tokenExpirationSeconds': minimum: got 60, want 600"
  "--set proxy.tracing.collector=https://jaeger:4317|at '/proxy/tracing/collector': 'https://jaeger:4317' does not match pattern"
  "--set proxy.tracing.sampling=2|at '/proxy/tracing/sampling': maximum: got 2, want 1"
  "--set identity.issuer.mode=provided|identity.issuer.mode=provided needs identity.trustRootsPEM, identity.issuer.certPEM, identity.issuer.keyPEM"
  "--set identity.issuer.mode=certManager --set-file identity.trustRootsPEM=$pki/root.pem|identity.issuer.mode=certManager needs identity.issuer.certManager.issuerRef.name"
  "--set identity.issuer.mode=certManager --set identity.issuer.certManager.issuerRef.name=x|identity.issuer.mode=certManager needs identity.trustRootsPEM"
  "--kube-version 1.28|proxy.nativeSidecar=true needs Kubernetes 1.29 or later"
  "--set cni.enabled=true --set proxy.nativeSidecar=false|cni.enabled=true needs proxy.nativeSidecar=true"
  "--set cni.enabled=true --set cni.binDir=opt/cni/bin|at '/cni/binDir': 'opt/cni/bin' does not match pattern"
  "--set cni.enabled=yes|at '/cni/enabled': got string, want boolean"
)
neg_ok=0
for entry in "${NEGATIVE[@]}"; do
  # shellcheck disable=SC2206
  args=(${entry%%|*})
  want=${entry#*|}
  if out=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${args[@]}" 2>&1 >/dev/null); then
    fail "helm template ${args[*]} succeeded; it must fail with: $want"
  elif [[ "$out" != *"$want"* ]]; then
    printf '%s\n' "$out" | sed 's/^/      /'
    fail "helm template ${args[*]} failed, but without: $want"
  else
    neg_ok=$((neg_ok + 1))
    say "refused as expected: ${args[*]} -> $(printf '%s' "$out" | grep -F -m1 -- "${want:0:30}" | sed 's/^[- ]*//')"
  fi
done
# The legacy profile works on the old clusters that it is for.
if "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version 1.27 \
    -f "$CHART/ci/legacy-sidecar-values.yaml" >/dev/null 2>"$WORK/err"; then
  say "legacy-sidecar renders for Kubernetes 1.27"
else
  sed 's/^/    /' "$WORK/err"
  fail "legacy-sidecar must render for Kubernetes 1.27"
fi

# ---------------------------------------------------------------------------
extra_files=0
for dir in "${validate_dirs[@]}"; do
  step "extra files: $dir ($validate_pattern)"
  if [ ! -d "$dir" ]; then
    fail "--validate-dir $dir: no such directory"
    continue
  fi
  mapfile -t files < <(find "$dir" -type f -name "$validate_pattern" | sort)
  if [ "${#files[@]}" -eq 0 ]; then
    fail "--validate-dir $dir: no file named $validate_pattern under it"
    continue
  fi
  extra_files=$((extra_files + ${#files[@]}))
  say "${#files[@]} file(s)"
  if ! "$PY" "$WORK/validate.py" --kube-version "$KUBE_VERSION" --label "dir:$dir" --counts "$COUNTS" \
      "${skip_args[@]}" "${files[@]}"; then
    fail "--validate-dir $dir: validation"
  fi
done

# ---------------------------------------------------------------------------
step "summary ($(( $(date +%s) - started ))s)"
printf '    %-36s %9s %8s %9s\n' "profile" "validated" "skipped" "problems"
total_v=0
while read -r label v s p; do
  printf '    %-36s %9d %8d %9d\n' "$label" "$v" "$s" "$p"
  total_v=$((total_v + v))
done <"$COUNTS"
say "manifests validated against Kubernetes $KUBE_VERSION (strict): $total_v"
say "skipped kinds (custom resources without a bundled schema): ${SKIP_KINDS[*]}"
say "bad values refused with the expected message: $neg_ok/${#NEGATIVE[@]}"
say "policy CRD: $crd_status"
say "injector config through \`trellis inject\`: $inject_status"
[ "${#validate_dirs[@]}" -eq 0 ] || say "extra files checked from --validate-dir: $extra_files"
if [ "${#failures[@]}" -gt 0 ]; then
  printf '\ncheck-chart: %d failure(s):\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
printf '\ncheck-chart: all checks passed\n'
