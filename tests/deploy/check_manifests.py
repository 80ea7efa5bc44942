#!/usr/bin/env python3
"""Checks the deployment manifests (scripts/deploy/): every profile in overlays/ rendered by
kubectl's built-in kustomize, offline, and every rendered object loaded into the official
Kubernetes Python client's models (Debian's python3-kubernetes) with nothing dropped: the
models ignore keys they do not know when they deserialize, so the object is serialized
back (ApiClient.sanitize_for_serialization) and compared with what kustomize rendered;
a key that did not come back is a field Kubernetes does not know (a typo, a wrong level).

Then each profile's promises: capabilities one by one (each with its reason in the
source), never privileged, Guaranteed QoS with whole CPUs and hugepages for default only,
the mounts, the probes on loopback, the agent's arguments, the CNI conflist of the init
container, the documents in the ConfigMap valid by `meshlaned --check`, and the image
the one scripts/image.sh builds from this checkout (through scripts/deploy/render.sh).

Environment: MESHLANED (the agent, for --check), MESHLANE_SOURCE_ROOT, KUBECTL (default:
kubectl on PATH). Exit 0 passed, 1 failed, 77 skipped (no kubectl with kustomize).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml
from kubernetes import client
from kubernetes.utils.quantity import parse_quantity

ROOT = os.environ.get("MESHLANE_SOURCE_ROOT") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "scripts", "deploy")
MESHLANED = os.environ.get("MESHLANED", os.path.join(ROOT, "build", "meshlaned"))

PROFILES = ["default", "demo", "minimal"]
NAMESPACE = "meshlane-system"
CONFIGMAP = "meshlane-desired-state"
METRICS = "127.0.0.1:9464"
CONTROL_SOCKET = "/run/meshlane/control.sock"
CONFLIST = {"cniVersion": "1.0.0", "name": "meshlane",
            "plugins": [{"type": "meshlane-cni", "agentSocket": CONTROL_SOCKET}]}
INSTALL_CNI = ["/usr/libexec/meshlane/busybox", "sh", "/usr/libexec/meshlane/install-cni"]

EBPF_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"}
CAPS = {
    "default": EBPF_CAPS | {"NET_RAW", "IPC_LOCK", "SYS_NICE"},  # af_packet pods, af_xdp uplink, worker_nice
    "demo": EBPF_CAPS | {"NET_RAW", "SYS_NICE"},                 # af_packet only
    "minimal": EBPF_CAPS,
}
AGENT_ARGS = ["--config", "/etc/meshlane/$(NODE_NAME).json", "--state-dir", "/var/lib/meshlane",
              "--control-socket", CONTROL_SOCKET, "--metrics-listen", METRICS,
              "--handover-state", "/run/meshlane/handover.state"]
# The eBPF load balancer's capacity per profile (the overlays' lb-capacity-patch.yaml): the
# default keeps the largest (no flags); the others size their maps to what they serve.
LB_CAPACITY_ARGS = {
    "default": [],
    "demo": ["--ebpf-lb-ports", "1024", "--ebpf-lb-backends", "16384"],
    "minimal": ["--ebpf-lb-ports", "16384", "--ebpf-lb-backends", "262144"],
}
# mountPath -> (volume kind, source) for the agent, per profile on top of these.
AGENT_MOUNTS = {
    "/etc/meshlane": ("configMap", CONFIGMAP),
    "/sys/fs/bpf": ("hostPath", "/sys/fs/bpf"),
    "/sys/fs/cgroup": ("hostPath", "/sys/fs/cgroup"),
    "/run/meshlane": ("hostPath", "/run/meshlane"),
    "/var/lib/meshlane": ("hostPath", "/var/lib/meshlane"),
}
EXTRA_AGENT_MOUNTS = {
    "default": {"/dev/hugepages": ("emptyDir", "HugePages"), "/var/run/dpdk": ("emptyDir", "Memory")},
    "demo": {"/var/run/dpdk": ("emptyDir", "Memory")},
    "minimal": {},
}
CNI_MOUNTS = {"/host/opt/cni/bin": ("hostPath", "/opt/cni/bin"),
              "/host/etc/cni/net.d": ("hostPath", "/etc/cni/net.d")}

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}", flush=True)


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(77)


def find_kubectl():
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        skip("no kubectl (Debian: kubernetes-client; scripts/setup.sh installs it)")
    probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        skip(f"{kubectl} has no built-in kustomize")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    print(f"kubectl: {kubectl}: {' '.join(version.stdout.split())[:160]}")
    return kubectl


def render(kubectl, profile, pinned):
    """The profile's objects: pinned through render.sh, or the overlay as it is."""
    if pinned:
        command = [os.path.join(DEPLOY, "render.sh"), profile]
    else:
        command = [kubectl, "kustomize", os.path.join(DEPLOY, "overlays", profile)]
    env = dict(os.environ, KUBECTL=kubectl)
    env.pop("MESHLANE_IMAGE", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(profile, f"{' '.join(command)} failed: {result.stderr.strip()}")
        return []
    return [o for o in yaml.safe_load_all(result.stdout) if o is not None]


# --- the Kubernetes models ---

api = client.ApiClient()


def model_name(obj):
    group_version = obj.get("apiVersion", "")
    version = group_version.split("/")[-1]
    return version[0].upper() + version[1:] + obj.get("kind", "")


def differences(original, reserialized, path="$"):
    """Where the model's serialization differs from the input: keys the model dropped
    (unknown fields), values it changed (types it coerced)."""
    out = []
    if isinstance(original, dict) and isinstance(reserialized, dict):
        for key, value in original.items():
            if key not in reserialized:
                out.append(f"{path}.{key}: unknown field (the model dropped it)")
            else:
                out += differences(value, reserialized[key], f"{path}.{key}")
        for key in reserialized:
            if key not in original:
                out.append(f"{path}.{key}: added by the model")
    elif isinstance(original, list) and isinstance(reserialized, list):
        if len(original) != len(reserialized):
            out.append(f"{path}: {len(original)} items became {len(reserialized)}")
        for i, (a, b) in enumerate(zip(original, reserialized)):
            out += differences(a, b, f"{path}[{i}]")
    elif original != reserialized or type(original) is not type(reserialized):
        out.append(f"{path}: {original!r} became {reserialized!r}")
    return out


def check_models(profile, objects):
    for obj in objects:
        where = f"{profile}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        name = model_name(obj)
        if not hasattr(client.models, name):
            fail(where, f"no Kubernetes model {name} for apiVersion {obj.get('apiVersion')}")
            continue
        try:
            model = api._ApiClient__deserialize(obj, name)  # the client's own deserializer
        except (ValueError, TypeError) as error:  # a required field missing, a wrong type
            fail(where, f"not a valid {name}: {error}")
            continue
        for difference in differences(obj, api.sanitize_for_serialization(model)):
            fail(where, difference)


# --- helpers over the rendered objects ---

def by_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def quantity(value):
    return parse_quantity(str(value))


def qos_class(pod_spec):
    """Kubernetes' QoS class of a pod (pkg/apis/core/helper/qos: GetPodQOS), over init and
    app containers, cpu and memory."""
    requests, limits = {}, {}
    guaranteed = True
    for c in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        resources = c.get("resources", {})
        r = {k: quantity(v) for k, v in resources.get("requests", {}).items()
             if k in ("cpu", "memory") and quantity(v) != 0}
        l = {k: quantity(v) for k, v in resources.get("limits", {}).items()
             if k in ("cpu", "memory") and quantity(v) != 0}
        for k, v in r.items():
            requests[k] = requests.get(k, 0) + v
        for k, v in l.items():
            limits[k] = limits.get(k, 0) + v
        if set(l) != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and all(requests.get(k, limits[k]) == limits[k] for k in ("cpu", "memory")):
        return "Guaranteed"
    return "Burstable"


def volume_source(volume):
    for kind in ("hostPath", "configMap", "emptyDir"):
        if kind in volume:
            source = volume[kind] or {}
            if kind == "hostPath":
                return kind, source.get("path")
            if kind == "configMap":
                return kind, source.get("name")
            return kind, source.get("medium", "")
    return "other", None


def mounts_of(container, volumes):
    out = {}
    for m in container.get("volumeMounts", []):
        volume = volumes.get(m["name"])
        out[m["mountPath"]] = volume_source(volume) if volume else ("missing volume " + m["name"], None)
    return out


def source_cap_comments(profile):
    """CAP -> its comment, from the file that lists the profile's capabilities."""
    patch = os.path.join(DEPLOY, "overlays", profile, "daemonset-patch.yaml")
    path = patch if "capabilities:" in open(patch).read() else os.path.join(DEPLOY, "base", "daemonset.yaml")
    comments = {}
    for line in open(path):
        m = re.match(r"\s*-\s*([A-Z_]+)\s*#\s*(\S.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    return path, comments


def check_documents(profile, configmap, lb_args):
    data = configmap.get("data") or {}
    if not data:
        fail(profile, "the ConfigMap holds no desired-state document")
    documents = {}
    with tempfile.TemporaryDirectory(prefix="meshlane-test-manifests-") as work:
        for key, text in sorted(data.items()):
            where = f"{profile}: ConfigMap {CONFIGMAP}[{key}]"
            if not key.endswith(".json"):
                fail(where, "keys are <node name>.json (the agent reads /etc/meshlane/$(NODE_NAME).json)")
                continue
            try:
                document = json.loads(text)
            except json.JSONDecodeError as error:
                fail(where, f"not JSON: {error}")
                continue
            documents[key] = document
            if document.get("node", {}).get("name") != key[:-len(".json")]:
                fail(where, f"node.name {document.get('node', {}).get('name')!r} is not the key's node name")
            path = os.path.join(work, key)
            with open(path, "w") as f:
                f.write(text)
            # Held to the capacity the profile's agent runs with.
            check = subprocess.run([MESHLANED, "--config", path, "--check", *lb_args], capture_output=True, text=True)
            if check.returncode != 0:
                fail(where, f"meshlaned --check refused it: {check.stderr.strip()}")
    return documents


def check_profile(profile, objects, expected_image):
    daemonsets = by_kind(objects, "DaemonSet")
    kinds = sorted(o["kind"] for o in objects)
    if kinds != ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]:
        fail(profile, f"objects {kinds}, expected one Namespace, ServiceAccount, ConfigMap, DaemonSet")
    if not daemonsets:
        return
    for o in objects:
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != NAMESPACE:
            fail(profile, f"{o['kind']} {o['metadata']['name']} is not in {NAMESPACE}")
    ds = daemonsets[0]
    where = f"{profile}: DaemonSet"
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    annotations = spec["template"]["metadata"].get("annotations", {})

    # Scheduling, updates, identity.
    strategy = spec.get("updateStrategy", {})
    if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 1:
        fail(where, f"updateStrategy {strategy}, expected RollingUpdate with maxUnavailable 1")
    if pod.get("priorityClassName") != "system-node-critical":
        fail(where, "priorityClassName is not system-node-critical")
    if pod.get("hostNetwork") is not True or pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        fail(where, "expected hostNetwork: true with dnsPolicy ClusterFirstWithHostNet")
    sa = by_kind(objects, "ServiceAccount")
    if not sa or pod.get("serviceAccountName") != sa[0]["metadata"]["name"]:
        fail(where, "serviceAccountName is not the rendered ServiceAccount")
    if pod.get("hostPID") or pod.get("hostIPC"):
        fail(where, "hostPID/hostIPC are not needed")
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(where, "the pod's seccompProfile is not RuntimeDefault")

    # Prometheus annotations (the HTTP surface's port).
    expected_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": METRICS.split(":")[1],
                            "prometheus.io/path": "/metrics"}
    for key, value in expected_annotations.items():
        if annotations.get(key) != value:
            fail(where, f"annotation {key} is {annotations.get(key)!r}, expected {value!r}")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = {c["name"]: c for c in pod.get("containers", [])}
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    agent = containers.get("meshlaned")
    if agent is None or len(containers) != 1:
        fail(where, f"containers {sorted(containers)}, expected the one agent container 'meshlaned'")
        return

    # Every container: the image of this checkout, no privilege.
    for c in list(inits.values()) + list(containers.values()):
        cw = f"{where}: container {c['name']}"
        if c.get("image") != expected_image:
            fail(cw, f"image {c.get('image')!r}, expected {expected_image!r} (scripts/image.sh --print-tag)")
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            fail(cw, "privileged: true (capabilities are listed one by one instead)")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            fail(cw, f"capabilities.drop {caps.get('drop')}, expected [ALL]")
        if sc.get("allowPrivilegeEscalation") is False and "SYS_ADMIN" in caps.get("add", []):
            fail(cw, "the API server refuses allowPrivilegeEscalation: false beside CAP_SYS_ADMIN")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cw, "readOnlyRootFilesystem is not true")

    # The agent's capabilities: the profile's set exactly, each explained in the source.
    added = agent.get("securityContext", {}).get("capabilities", {}).get("add", [])
    if len(added) != len(set(added)) or set(added) != CAPS[profile]:
        fail(where, f"capabilities.add {sorted(added)}, expected {sorted(CAPS[profile])}")
    source, comments = source_cap_comments(profile)
    for cap in added:
        if len(comments.get(cap, "")) < 10:
            fail(where, f"{cap} has no comment saying which call needs it in {os.path.relpath(source, ROOT)}")
    if annotations.get("container.apparmor.security.beta.kubernetes.io/meshlaned") != "unconfined":
        fail(where, "the agent needs AppArmor unconfined (the default profile denies pinning in /sys/fs/bpf)")

    # Arguments, environment, ports, probes.
    expected_args = AGENT_ARGS + LB_CAPACITY_ARGS[profile]
    if agent.get("command") != ["/usr/bin/meshlaned"] or agent.get("args") != expected_args:
        fail(where, f"agent command/args {agent.get('command')} {agent.get('args')}, expected {expected_args}")
    env = {e["name"]: e for e in agent.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(where, "NODE_NAME does not come from the downward API (spec.nodeName)")
    host, port = METRICS.split(":")
    if host != "127.0.0.1":
        fail(where, "the HTTP surface has no authentication: it must stay on loopback")
    for name, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = agent.get(name, {}).get("httpGet", {})
        if get.get("path") != path or str(get.get("port")) != port or get.get("host") != host:
            fail(where, f"{name} is {get}, expected httpGet {path} on {host}:{port} (host network: the pod IP is the node IP)")
    if [p.get("containerPort") for p in agent.get("ports", [])] != [int(port)]:
        fail(where, f"container ports {agent.get('ports')}, expected {port}")

    # Mounts.
    expected = dict(AGENT_MOUNTS, **EXTRA_AGENT_MOUNTS[profile])
    actual = mounts_of(agent, volumes)
    if actual != expected:
        fail(where, f"agent mounts {actual}, expected {expected}")
    propagation = {m["mountPath"]: m.get("mountPropagation") for m in agent.get("volumeMounts", [])}
    for path in ("/sys/fs/bpf", "/sys/fs/cgroup"):
        if propagation.get(path) != "HostToContainer":  # Bidirectional needs a privileged container
            fail(where, f"{path} mountPropagation {propagation.get(path)}, expected HostToContainer")
    if [m for m in agent.get("volumeMounts", []) if m["mountPath"] == "/etc/meshlane" and not m.get("readOnly")]:
        fail(where, "the desired-state documents are mounted writable")
    mounted = {m["name"] for c in list(inits.values()) + [agent] for m in c.get("volumeMounts", [])}
    if set(volumes) != mounted:
        fail(where, f"volumes {sorted(volumes)} but mounted {sorted(mounted)}")
    for v in volumes.values():
        if "hostPath" in v and v["hostPath"].get("type") not in ("Directory", "DirectoryOrCreate"):
            fail(where, f"hostPath volume {v['name']} has type {v['hostPath'].get('type')}")
    if volumes.get("desired-state", {}).get("configMap", {}).get("name") not in \
            [c["metadata"]["name"] for c in by_kind(objects, "ConfigMap")]:
        fail(where, "the desired-state volume names no rendered ConfigMap")

    # meshlane-cni: installed by the init container (not in minimal: no DPDK workers there).
    if profile == "minimal":
        if inits:
            fail(where, f"init containers {sorted(inits)} in the eBPF-only profile (meshlane-cni needs the DPDK workers)")
    else:
        init = inits.get("install-cni")
        if init is None or len(inits) != 1:
            fail(where, f"init containers {sorted(inits)}, expected install-cni")
        else:
            iw = f"{where}: init container install-cni"
            if init.get("command") != INSTALL_CNI:
                fail(iw, f"command {init.get('command')}, expected {INSTALL_CNI}")
            ienv = {e["name"]: e.get("value") for e in init.get("env", [])}
            try:
                conflist = json.loads(ienv.get("MESHLANE_CNI_CONFLIST") or "")
            except json.JSONDecodeError as error:
                conflist = f"not JSON: {error}"
            if conflist != CONFLIST:
                fail(iw, f"conflist {conflist!r}, expected {CONFLIST!r}")
            if not (ienv.get("MESHLANE_CNI_CONFLIST_NAME") or "").endswith(".conflist"):
                fail(iw, "the conflist's file name does not end in .conflist")
            if ienv.get("CNI_BIN_DIR") != "/host/opt/cni/bin" or ienv.get("CNI_CONF_DIR") != "/host/etc/cni/net.d":
                fail(iw, "CNI_BIN_DIR/CNI_CONF_DIR are not the mounted host directories")
            if mounts_of(init, volumes) != CNI_MOUNTS:
                fail(iw, f"mounts {mounts_of(init, volumes)}, expected {CNI_MOUNTS}")
            if init.get("securityContext", {}).get("capabilities", {}).get("add"):
                fail(iw, "adds capabilities; root writing root's own directories needs none")
            if init.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                fail(iw, "allowPrivilegeEscalation is not false")

    # Resources and QoS.
    qos = qos_class(pod)
    hugepages = {name: c.get("resources", {}) for name, c in {**inits, **containers}.items()}
    huge_volumes = [v for v in volumes.values() if (v.get("emptyDir") or {}).get("medium", "").startswith("HugePages")]
    if profile == "default":
        if qos != "Guaranteed":
            fail(where, f"QoS {qos}, expected Guaranteed")
        for c in list(inits.values()) + [agent]:
            r = c.get("resources", {})
            for k in ("cpu", "memory"):
                if k not in r.get("requests", {}) or quantity(r["requests"][k]) != quantity(r.get("limits", {}).get(k, -1)):
                    fail(where, f"{c['name']}: {k} requests {r.get('requests', {}).get(k)} != limits {r.get('limits', {}).get(k)}")
            cpu = quantity(r.get("limits", {}).get("cpu", 0))
            if cpu <= 0 or cpu != int(cpu):
                fail(where, f"{c['name']}: cpu {r.get('limits', {}).get('cpu')} is not a whole number of CPUs")
        r = agent.get("resources", {})
        h_req, h_lim = r.get("requests", {}).get("hugepages-2Mi"), r.get("limits", {}).get("hugepages-2Mi")
        if not h_lim or quantity(h_lim) <= 0 or h_req != h_lim:
            fail(where, f"hugepages-2Mi requests {h_req} limits {h_lim}: expected equal and above 0")
        if len(huge_volumes) != 1:
            fail(where, "expected one emptyDir of medium HugePages")
    else:
        if qos != "Burstable":
            fail(where, f"QoS {qos}, expected Burstable")
        for name, r in hugepages.items():
            if any(k.startswith("hugepages-") for part in r.values() for k in part):
                fail(where, f"{name} asks for hugepages")
        if huge_volumes:
            fail(where, "a HugePages volume outside the default profile")

    # The documents.
    configmaps = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == CONFIGMAP]
    if not configmaps:
        fail(profile, f"no ConfigMap {CONFIGMAP}")
        return
    documents = check_documents(profile, configmaps[0], LB_CAPACITY_ARGS[profile])
    for key, document in documents.items():
        dw = f"{profile}: {key}"
        dataplane = document.get("dataplane")
        if profile == "minimal":
            if dataplane is not None:
                fail(dw, "a dataplane section in the eBPF-only profile")
            continue
        if dataplane is None:
            fail(dw, "no dataplane section")
            continue
        eal_args = dataplane.get("eal_args", [])
        if profile == "default" and "--no-huge" in eal_args:
            fail(dw, "--no-huge in the profile that reserves hugepages")
        if profile == "demo" and "--no-huge" not in eal_args:
            fail(dw, "the demo reserves no hugepages: its EAL needs --no-huge")
        if profile == "demo" and len(document.get("services", [])) < 3:
            fail(dw, "the demo's status page wants sample services")
        drivers = {dataplane.get("uplink", {}).get("driver"), dataplane.get("pod_driver", "af_packet")}
        if "af_xdp" in drivers and "IPC_LOCK" not in added:
            fail(dw, "af_xdp ports need IPC_LOCK (UMEM)")
        if drivers & {"af_packet", "af_xdp"} and "NET_RAW" not in added:
            fail(dw, "af_packet/af_xdp ports need NET_RAW")
        cg = document.get("node", {}).get("pod_cgroup", "")
        if not cg.startswith("/sys/fs/cgroup/") or cg.rstrip("/") == "/sys/fs/cgroup":
            fail(dw, f"node.pod_cgroup {cg!r} is not a cgroup below the mounted /sys/fs/cgroup")


def strip_images(objects):
    text = yaml.safe_dump_all(objects, sort_keys=True)
    return re.sub(r"image: \S+", "image: X", text)


def main():
    start = time.monotonic()
    kubectl = find_kubectl()
    if not os.access(MESHLANED, os.X_OK):
        fail("setup", f"no agent at {MESHLANED} (MESHLANED)")
    tag = subprocess.run([os.path.join(ROOT, "scripts", "image.sh"), "--print-tag"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if not re.fullmatch(r"meshlane/meshlaned:\d+\.\d+\.\d+-[0-9a-f]{7,}", tag):
        fail("image.sh", f"--print-tag gave {tag!r}")
    expected_image = "localhost/" + tag
    print(f"image: {expected_image}")

    overlays = sorted(d for d in os.listdir(os.path.join(DEPLOY, "overlays")))
    if overlays != sorted(PROFILES):
        fail("overlays", f"profiles {overlays}, expected {sorted(PROFILES)}")
    stray = [f for f in os.listdir(DEPLOY) if f.endswith((".yaml", ".yml"))]
    if stray:
        fail("scripts/deploy", f"manifests outside base/ and overlays/: {stray} (one source)")

    for profile in PROFILES:
        t = time.monotonic()
        raw = render(kubectl, profile, pinned=False)
        pinned = render(kubectl, profile, pinned=True)
        if not raw or not pinned:
            continue
        if strip_images(raw) != strip_images(pinned):
            fail(profile, "render.sh changes more than the image")
        check_models(profile, pinned)
        check_profile(profile, pinned, expected_image)
        print(f"{profile}: {len(pinned)} objects checked in {time.monotonic() - t:.1f} s", flush=True)

    print(f"{len(failures)} failures, {time.monotonic() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
