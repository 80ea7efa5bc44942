#!/usr/bin/env python3
"""Builds the image with scripts/image.sh and runs it with podman the way the DaemonSet
would: only the capabilities the rendered manifests list (never --privileged), a read-only
root file system, the manifests' commands, arguments, environment and mounts.

1. scripts/image.sh builds the OCI archive (timed); its tag is `image.sh --print-tag`'s and
   the archive's name is the image the rendered manifests name.
2. The archive's one layer holds the three binaries, the DPDK drivers, the loader, libxdp's
   BPF objects, the busybox of the CNI step and nothing else: every library in it is one
   that the loader inside the image resolves for a binary or a driver (`ld.so --list` run
   in the image), and nothing resolves to "not found". No /bin/sh.
3. `meshlaned --version` and `meshctl version` (host network, the default profile's
   capabilities); `meshlaned --config <document without pod_cgroup and dataplane>
   --no-ebpf --check` accepts a valid document and refuses an invalid one.
4. The init container (install-cni) into directories of the test: the conflist is the
   manifest's, the launcher runs meshlane-cni VERSION on this host with the libraries it
   brought (LD_DEBUG), a version of another image is removed.
5. The agent with the default profile's capabilities, in a network namespace of the test:
   the eBPF fast path on a cgroup of the test (kernel check included) and a DPDK af_xdp
   port on a veth of the test become ready (/readyz 200, `meshctl status` in the image);
   SIGTERM stops it cleanly; `meshlaned --uninstall` removes the pins. DPDK runs with
   --no-huge here (the machine's few hugepages belong to the other tests); the manifests'
   hugepages volume is the only mount left out.
6. The same with the demo profile's capabilities and an af_packet port, and with the
   minimal profile's: eBPF only, ready, kernel check run.

Everything carries the test prefix (meshlane-test-XXXXXX, netns mltXXXXXX) and is removed at
the end, also on failure or SIGTERM: containers, podman's private directory (storage and
configuration there, never /var/lib/containers: podman runs in a private mount namespace
with a tmpfs over /var/lib), cgroups, pins, the namespace.

Environment: MESHLANE_SOURCE_ROOT, MESHLANE_BUILD (the build directory with the binaries),
MESHLANED (the host's agent, for a last --uninstall if a step failed), KUBECTL.
Exit 0 passed, 1 failed, 77 skipped (not root, no podman, no kubectl).
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import yaml

ROOT = os.environ.get("MESHLANE_SOURCE_ROOT") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("MESHLANE_BUILD", os.path.join(ROOT, "build"))
MESHLANED = os.environ.get("MESHLANED", os.path.join(BUILD, "meshlaned"))
HEX = secrets.token_hex(3)
PREFIX = f"meshlane-test-{HEX}"
NETNS = f"mlt{HEX}"
WORK = f"/tmp/{PREFIX}-podman"  # scripts/cleanup.sh removes leftovers of this name
PIN_DIR = f"/sys/fs/bpf/{PREFIX}"
CGROUP_PARENT = f"/{PREFIX}-podman"
PMDS = ["net_af_packet", "net_af_xdp", "net_pcap", "net_ring", "net_null", "mempool_ring"]
LOADER = "/usr/lib64/ld-linux-x86-64.so.2"
BUSYBOX = "/usr/libexec/meshlane/busybox"

failures = []
containers = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}", flush=True)


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(77)


def run(command, check=False, timeout=120, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} (exit {result.returncode}): {result.stderr.strip()}")
    return result


def podman(*args, timeout=120):
    """podman with this test's configuration and storage, in a private mount namespace
    with a tmpfs over /var/lib (podman 4.3 writes a cache below /var/lib/containers
    whatever its storage root)."""
    env = dict(os.environ, CONTAINERS_CONF=f"{WORK}/containers.conf",
               CONTAINERS_STORAGE_CONF=f"{WORK}/storage.conf", TMPDIR=f"{WORK}/tmp")
    script = 'mount -t tmpfs -o size=16m,mode=0755 meshlane-test /var/lib && exec podman "$@"'
    return run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args],
               env=env, timeout=timeout)


def setup_podman():
    for sub in ("storage", "run", "tmp", "runc"):
        os.makedirs(f"{WORK}/{sub}", exist_ok=True)
    with open(f"{WORK}/containers.conf", "w") as f:
        f.write(f"""[containers]
default_ulimits = []
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
runtime = "runc"
tmp_dir = "{WORK}/tmp"
image_copy_tmp_dir = "{WORK}/tmp"
lock_type = "file"
static_dir = "{WORK}/storage/libpod"
volume_path = "{WORK}/storage/volumes"
[engine.runtimes]
runc = ["{WORK}/runc-wrapper"]
""")
    with open(f"{WORK}/storage.conf", "w") as f:
        f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{WORK}/storage"\nrunroot = "{WORK}/run"\n')
    # runc's state in this directory too (podman's --runtime-flag does not reach every caller).
    with open(f"{WORK}/runc-wrapper", "w") as f:
        f.write(f'#!/bin/sh\nexec /usr/bin/runc --root {WORK}/runc "$@"\n')
    os.chmod(f"{WORK}/runc-wrapper", 0o755)


def cgroup_mounts():
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2] in ("cgroup", "cgroup2")]


def cgroup2_mount():
    with open("/proc/mounts") as f:
        for line in f:
            if line.split()[2] == "cgroup2":
                return line.split()[1]
    return None


def remove_cgroup_tree(top):
    if not os.path.isdir(top):
        return
    dirs = [top] + [os.path.join(d, s) for d, subs, _ in os.walk(top) for s in subs]
    for d in sorted(dirs, key=len, reverse=True):
        for _ in range(100):
            try:
                os.rmdir(d)
                break
            except OSError:
                try:
                    for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
                time.sleep(0.02)
    if os.path.exists(top):
        fail("cleanup", f"cgroup {top} is left")


def cleanup():
    for name in containers:
        podman("rm", "-f", "-t", "0", name)
    if os.path.exists(PIN_DIR) and os.access(MESHLANED, os.X_OK):
        run([MESHLANED, "--uninstall", "--bpf-pin-dir", PIN_DIR])
    if os.path.exists(PIN_DIR):
        shutil.rmtree(PIN_DIR, ignore_errors=True)
    for mount in cgroup_mounts():
        remove_cgroup_tree(mount + CGROUP_PARENT)
        remove_cgroup_tree(f"{mount}/{PREFIX}")
    run(["ip", "netns", "delete", NETNS])
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(WORK + "/")]
    for point in sorted(points, key=len, reverse=True):
        run(["umount", "-l", point])
    shutil.rmtree(WORK, ignore_errors=True)
    for leftover in (WORK, PIN_DIR, f"/run/netns/{NETNS}"):
        if os.path.exists(leftover):
            fail("cleanup", f"{leftover} is left")


# --- the manifests ---

def rendered_daemonset(kubectl, profile):
    result = run([os.path.join(ROOT, "scripts", "deploy", "render.sh"), profile], check=True,
                 env=dict(os.environ, KUBECTL=kubectl))
    for obj in yaml.safe_load_all(result.stdout):
        if obj and obj.get("kind") == "DaemonSet":
            return obj
    raise RuntimeError(f"render.sh {profile}: no DaemonSet")


def container_of(ds, name, init=False):
    spec = ds["spec"]["template"]["spec"]
    for c in spec.get("initContainers" if init else "containers", []):
        if c["name"] == name:
            return c
    raise RuntimeError(f"no container {name}")


def security_args(container):
    """podman's flags for the container's securityContext: capabilities, read-only root,
    no new privileges."""
    sc = container.get("securityContext", {})
    if sc.get("privileged"):
        raise RuntimeError(f"{container['name']} is privileged")
    args = ["--cap-drop", "all"]
    added = sc.get("capabilities", {}).get("add", [])
    if added:
        args += ["--cap-add", ",".join(added)]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    return args


def agent_mount_args(ds, container, config_dir, note):
    """The agent's volumeMounts as podman flags: the host's bpffs and cgroup hierarchy as
    they are, the host directories the agent writes as directories of the test, the
    ConfigMap as config_dir, memory emptyDirs as tmpfs; the hugepages emptyDir is left out."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    args = []
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        path = m["mountPath"]
        if "configMap" in v:
            args += ["-v", f"{config_dir}:{path}:ro"]
        elif "hostPath" in v and v["hostPath"]["path"] in ("/sys/fs/bpf", "/sys/fs/cgroup"):
            propagation = {"HostToContainer": "rslave", None: "rprivate"}[m.get("mountPropagation")]
            args += ["-v", f"{v['hostPath']['path']}:{path}:{propagation}"]
        elif "hostPath" in v:
            local = f"{WORK}/host{v['hostPath']['path']}"
            os.makedirs(local, exist_ok=True)
            args += ["-v", f"{local}:{path}"]
        elif (v.get("emptyDir") or {}).get("medium", "").startswith("HugePages"):
            note(f"left out: {path} (emptyDir medium {v['emptyDir']['medium']}); the document runs EAL with --no-huge")
        elif "emptyDir" in v:
            args += ["--tmpfs", path]
        else:
            raise RuntimeError(f"volume {m['name']} of an unexpected kind")
    return args


# --- the steps ---

def build_image(tag):
    start = time.monotonic()
    result = run([os.path.join(ROOT, "scripts", "image.sh"), "--no-build", "--build-dir", BUILD,
                  "--output", f"{WORK}/meshlane-image.tar"], timeout=600)
    seconds = time.monotonic() - start
    print(result.stderr.strip())
    if result.returncode != 0:
        raise RuntimeError(f"scripts/image.sh failed: {result.stderr.strip()}")
    built = result.stdout.strip().splitlines()[-1]
    if built != tag:
        fail("image.sh", f"built {built}, --print-tag says {tag}")
    size = os.path.getsize(f"{WORK}/meshlane-image.tar")
    print(f"image: {built}, {size / 1048576:.1f} MiB archive, built in {seconds:.1f} s", flush=True)


def archive_contents(expected_name):
    """(regular files, symbolic links {path: target}) of the archive's one layer."""
    with tarfile.open(f"{WORK}/meshlane-image.tar") as archive:
        index = json.load(archive.extractfile("index.json"))
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
        if names != [expected_name]:
            fail("archive", f"names {names}, expected [{expected_name!r}] (the manifests' image)")
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(archive.extractfile(f"blobs/sha256/{digest}"))
        if len(manifest["layers"]) != 1:
            fail("archive", f"{len(manifest['layers'])} layers, expected 1")
        files, links = set(), {}
        for layer in manifest["layers"]:
            blob = archive.extractfile(f"blobs/sha256/{layer['digest'].split(':')[1]}")
            with tarfile.open(fileobj=blob, mode="r|*") as tar:
                for member in tar:
                    path = "/" + member.name.lstrip("./")
                    if member.issym():
                        links[path] = member.linkname
                    elif member.isfile():
                        files.add(path)
        return files, links


def resolve(path, links):
    """PATH inside the image with every link on the way resolved; the chain of links."""
    chain = []
    for _ in range(40):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if prefix in links:
                target = links[prefix]
                base = os.path.dirname(prefix)
                chain.append(prefix)
                path = os.path.normpath(target if target.startswith("/") else os.path.join(base, target))
                path = path + ("/" + "/".join(parts[i:]) if parts[i:] else "")
                break
        else:
            return path, chain
    raise RuntimeError(f"link loop at {path}")


def check_contents(image, files, links):
    binaries = ["/usr/bin/meshlaned", "/usr/bin/meshctl", "/usr/bin/meshlane-cni"]
    pmd_files = sorted(f for f in files if re.search(r"/dpdk/pmds-[^/]+/librte_[a-z_]+\.so\.[0-9.]+$", f))
    for pmd in PMDS:
        if not [f for f in pmd_files if f"/librte_{pmd}.so." in f] or \
                not [l for l in links if l.endswith(f"/librte_{pmd}.so")]:
            fail("contents", f"no DPDK driver {pmd} in EAL's plugin directory")
    for shell in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/busybox", "/bin/busybox"):
        if resolve(shell, links)[0] in files:
            fail("contents", f"{shell} in the image (no shell but the CNI step's busybox)")
    if sorted(f for f in files if f.startswith("/usr/bin/")) != sorted(binaries):
        fail("contents", f"/usr/bin holds {sorted(f for f in files if f.startswith('/usr/bin/'))}")

    # The loader inside the image lists what each binary and driver needs.
    script = "; ".join(f"echo '== {f}'; {LOADER} --list {f}" for f in binaries + pmd_files)
    listed = podman("run", "--rm", "--network", "none", "--cgroup-parent", CGROUP_PARENT,
                    "--entrypoint", BUSYBOX, image, "sh", "-c", script)
    if listed.returncode != 0:
        fail("contents", f"ld.so --list in the image failed: {listed.stderr.strip()}")
    needed = set()
    for line in listed.stdout.splitlines():
        if "not found" in line:
            fail("contents", f"unresolved in the image: {line.strip()}")
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+) \(0x", line)
        if m:
            needed.add(m.group(1))
    expected = set(binaries)
    for path in needed | set(pmd_files) | {LOADER} | {l for l in links if "/dpdk/pmds-" in l}:
        real, _ = resolve(path, links)
        expected.add(real)
    data = {f for f in files if f.startswith(("/usr/lib/x86_64-linux-gnu/bpf/", "/usr/share/meshlane/"))}
    if len(data & {f for f in files if f.endswith((".o",))}) != 3:
        fail("contents", f"libxdp's BPF objects: {sorted(d for d in data if d.endswith('.o'))}")
    expected |= data | {BUSYBOX, "/usr/libexec/meshlane/install-cni"}
    if files - expected:
        fail("contents", f"files nothing needs: {sorted(files - expected)}")
    if expected - files:
        fail("contents", f"needed but missing: {sorted(expected - files)}")
    print(f"contents: {len(files)} files, each needed; {len(pmd_files)} DPDK drivers", flush=True)


def sanitizer_args():
    """In the sanitizer pass (scripts/sanitize.sh) the image holds the instrumented binaries.
    podman passes no environment through, so the containers get the pass's options here,
    and LeakSanitizer's suppressions file (third-party leaks, e.g. libxdp's xsk_umem in an
    af_xdp agent) mounted where their LSAN_OPTIONS names it. Nothing outside that pass."""
    args = []
    for name in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if os.environ.get(name):
            args += ["-e", f"{name}={os.environ[name]}"]
    lsan = os.environ.get("LSAN_OPTIONS")
    if lsan:
        m = re.search(r"suppressions=([^:]+)", lsan)
        if m:
            args += ["-v", f"{m.group(1)}:/etc/meshlane-lsan.supp:ro"]
            lsan = lsan.replace(m.group(0), "suppressions=/etc/meshlane-lsan.supp")
        args += ["-e", f"LSAN_OPTIONS={lsan}"]
    return args


def check_commands(image, version, agent):
    base = ["run", "--rm", "--network", "host", "--cgroup-parent", CGROUP_PARENT] + security_args(agent) + \
        sanitizer_args()
    for command, expected in ((["meshlaned", "--version"], f"meshlaned {version}"),
                              (["meshctl", "version"], f"meshctl {version}")):
        result = podman(*base, image, *command)
        if result.returncode != 0 or result.stdout.strip() != expected:
            fail("run", f"{' '.join(command)}: exit {result.returncode}, {result.stdout.strip()!r} {result.stderr.strip()!r}")
        else:
            print(f"run: {' '.join(command)} -> {expected}", flush=True)

    config = f"{WORK}/check"
    os.makedirs(config)
    document = {"version": 1,
                "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
                "services": [{"name": "web", "vip": "198.19.128.10",
                              "ports": [{"name": "http", "port": 80, "protocol": "tcp", "target_port": 8080}],
                              "backends": [{"ip": "198.18.1.20", "port": 8080, "weight": 1, "node": "node1"}]}]}
    with open(f"{config}/node1.json", "w") as f:
        json.dump(document, f)
    document["services"][0]["backends"][0]["weight"] = 0
    with open(f"{config}/invalid.json", "w") as f:
        json.dump(document, f)
    for name, code, text in (("node1.json", 0, "valid"), ("invalid.json", 1, "$.services[0].backends[0].weight")):
        result = podman(*base, "-v", f"{config}:/etc/meshlane:ro", image,
                        "meshlaned", "--config", f"/etc/meshlane/{name}", "--no-ebpf", "--check")
        if result.returncode != code or text not in result.stdout + result.stderr:
            fail("run", f"--check {name}: exit {result.returncode} (expected {code}): {result.stdout}{result.stderr}")
        else:
            print(f"run: meshlaned --config {name} --no-ebpf --check -> exit {code}", flush=True)


def check_install_cni(image, ds, version):
    init = container_of(ds, "install-cni", init=True)
    env = {e["name"]: e["value"] for e in init.get("env", [])}
    host = {"/opt/cni/bin": f"{WORK}/host-cni-bin", "/etc/cni/net.d": f"{WORK}/host-cni-conf"}
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    mounts = []
    for m in init["volumeMounts"]:
        local = host[volumes[m["name"]]["hostPath"]["path"]]
        os.makedirs(local, exist_ok=True)
        mounts += ["-v", f"{local}:{m['mountPath']}"]
    bin_dir, conf_dir = host["/opt/cni/bin"], host["/etc/cni/net.d"]
    old = f"{bin_dir}/meshlane-cni.d/0.0.0-old"
    os.makedirs(old)
    open(f"{old}/meshlane-cni", "w").close()
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    command = init["command"]
    for attempt in (1, 2):  # a second run (an agent pod restarted) changes nothing
        result = podman("run", "--rm", "--network", "none", "--cgroup-parent", CGROUP_PARENT,
                        *security_args(init), *mounts, *env_args, *sanitizer_args(), "--entrypoint", command[0],
                        image, *command[1:])
        if result.returncode != 0:
            fail("install-cni", f"run {attempt}: exit {result.returncode}: {result.stderr.strip()}")
            return
    conflist_path = f"{conf_dir}/{env['MESHLANE_CNI_CONFLIST_NAME']}"
    with open(conflist_path) as f:
        if json.load(f) != json.loads(env["MESHLANE_CNI_CONFLIST"]):
            fail("install-cni", "the conflist on the node is not the manifest's")
    if sorted(os.listdir(conf_dir)) != [env["MESHLANE_CNI_CONFLIST_NAME"]]:
        fail("install-cni", f"{conf_dir} holds {os.listdir(conf_dir)}")
    if sorted(os.listdir(f"{bin_dir}/meshlane-cni.d")) != [version]:
        fail("install-cni", f"meshlane-cni.d holds {os.listdir(f'{bin_dir}/meshlane-cni.d')}, expected [{version}]")
    # The runtime runs the plugin on the host: VERSION, with every library from the bundle.
    bundle = f"{bin_dir}/meshlane-cni.d/{version}"
    result = run([f"{bin_dir}/meshlane-cni"], input='{"cniVersion":"1.0.0","name":"t","type":"meshlane-cni"}',
                 env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin", "LD_DEBUG": "libs"})
    try:
        versions = json.loads(result.stdout).get("supportedVersions", [])
    except json.JSONDecodeError:
        versions = []
    if result.returncode != 0 or "1.0.0" not in versions:
        fail("install-cni", f"meshlane-cni VERSION on the host: exit {result.returncode}: {result.stdout} {result.stderr[-500:]}")
    # LD_DEBUG also reports /bin/sh's own libc and loader (the launcher is a shell script).
    loaded = re.findall(r"calling init: (\S+)", result.stderr)
    outside = [p for p in loaded if not p.startswith(bundle + "/")
               and os.path.basename(p) not in ("libc.so.6", "ld-linux-x86-64.so.2")]
    if f"{bundle}/libc.so.6" not in loaded or outside:
        fail("install-cni", f"the plugin loaded libraries from outside its bundle: {outside or loaded}")
    listed = run([f"{bundle}/ld-linux-x86-64.so.2", "--library-path", bundle, "--list", f"{bundle}/meshlane-cni"])
    resolved = re.findall(r"=> (\S+)", listed.stdout)
    if not resolved or [p for p in resolved if not p.startswith(bundle + "/")]:
        fail("install-cni", f"the bundle's loader resolves outside the bundle: {listed.stdout}")
    print(f"install-cni: conflist and launcher installed; meshlane-cni VERSION on this host -> {versions}, "
          f"its {len(resolved)} libraries from {os.path.relpath(bundle, WORK)}", flush=True)


def wait_ready(name, timeout=90):
    deadline = time.monotonic() + timeout
    code = ""
    while time.monotonic() < deadline:
        code = run(["nsenter", f"--net=/run/netns/{NETNS}", "curl", "-s", "-m", "2", "-o", "/dev/null",
                    "-w", "%{http_code}", "http://127.0.0.1:9464/readyz"]).stdout
        if code == "200":
            return True
        state = podman("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            break
        time.sleep(0.5)
    log = podman("logs", name)
    fail(name, f"not ready (/readyz {code!r}); log:\n{(log.stdout + log.stderr)[-3000:]}")
    return False


def run_agent(image, ds, profile, document, expect_dataplane):
    """The agent as the profile's DaemonSet runs it; True when it became ready."""
    agent = container_of(ds, "meshlaned")
    name = f"{PREFIX}-{profile}"
    config = f"{WORK}/etc-{profile}"
    os.makedirs(config)
    with open(f"{config}/node1.json", "w") as f:
        json.dump(document, f)
    notes = []
    args = [a.replace("$(NODE_NAME)", "node1") for a in agent["args"]] + ["--bpf-pin-dir", PIN_DIR]
    env = [a for e in agent.get("env", []) if e["name"] == "NODE_NAME" for a in ("-e", "NODE_NAME=node1")]
    containers.append(name)
    result = podman("run", "-d", "--name", name, "--network", f"ns:/run/netns/{NETNS}",
                    "--cgroup-parent", CGROUP_PARENT, *security_args(agent),
                    *agent_mount_args(ds, agent, config, notes.append), *env, *sanitizer_args(),
                    "--entrypoint", agent["command"][0], image, *args)
    for note in notes:
        print(f"{profile} agent: {note}")
    if result.returncode != 0:
        fail(name, f"podman run: {result.stderr.strip()}")
        return
    caps = agent["securityContext"]["capabilities"]["add"]
    if not wait_ready(name):
        return
    status = podman("exec", name, "meshctl", "status", "-o", "json")
    try:
        status = json.loads(status.stdout)
    except json.JSONDecodeError:
        fail(name, f"meshctl status in the image: {status.stdout} {status.stderr}")
        return
    ebpf = status.get("subsystems", {}).get("ebpf", {})
    dataplane = status.get("subsystems", {}).get("dataplane", {})
    if status.get("ready") is not True or ebpf.get("attached") is not True:
        fail(name, f"status: ready {status.get('ready')}, eBPF attached {ebpf.get('attached')}")
    if ebpf.get("kernel_check", {}).get("ran") is not True:
        fail(name, f"the eBPF kernel check did not run: {ebpf.get('kernel_check', {}).get('error')}")
    # The load balancer's capacity is the one the profile's args give (the largest without).
    flags = dict(zip(agent["args"], agent["args"][1:]))
    expected_capacity = {"service_ports": int(flags.get("--ebpf-lb-ports", 131072)),
                         "backends": int(flags.get("--ebpf-lb-backends", 2097152))}
    capacity = {k: ebpf.get("lb_capacity", {}).get(k) for k in expected_capacity}
    if capacity != expected_capacity:
        fail(name, f"eBPF load balancer capacity {capacity}, the profile's args say {expected_capacity}")
    if expect_dataplane and dataplane.get("running") is not True:
        fail(name, f"the DPDK workers are not running: {dataplane}")
    # The profile's capabilities let the workers run at tunables.worker_nice: "auto", -10,
    # 0 on a node whose pods are on af_xdp.
    if expect_dataplane and not dataplane.get("workers"):
        fail(name, f"the status lists no DPDK workers: {dataplane}")
    wanted_nice = 0 if expect_dataplane and document["dataplane"].get("pod_driver") == "af_xdp" else -10
    for worker in dataplane.get("workers") or [] if expect_dataplane else []:
        if worker.get("nice") != wanted_nice or worker.get("nice_refused"):
            fail(name, f"worker {worker.get('worker')} runs at nice {worker.get('nice')} (wanted {wanted_nice}): "
                       f"{worker.get('nice_refused') or 'not refused'}")
    if not expect_dataplane and dataplane.get("running"):
        fail(name, "DPDK workers in the eBPF-only profile")
    stop = podman("stop", "-t", "20", name)
    code = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    log = podman("logs", name)
    if stop.returncode != 0 or code != "0" or "stopped" not in log.stdout + log.stderr:
        fail(name, f"SIGTERM: exit code {code}: {(log.stdout + log.stderr)[-1500:]}")
    podman("rm", "-f", name)
    containers.remove(name)
    ports = ", ".join(f"{p.get('interface')} ({document['dataplane']['uplink']['driver']})"
                      for p in (dataplane.get("ports") or []))
    print(f"{profile} agent: ready with {','.join(caps)}; eBPF attached, kernel check run, load balancer "
          f"{capacity['service_ports']} service ports / {capacity['backends']} backends"
          f"{', DPDK workers running on ' + ports if expect_dataplane else ''}; stopped by SIGTERM", flush=True)
    uninstall = podman("run", "--rm", "--network", "none", "--cgroup-parent", CGROUP_PARENT,
                       *security_args(agent), *sanitizer_args(), "-v", "/sys/fs/bpf:/sys/fs/bpf:rslave",
                       "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rslave", image,
                       "meshlaned", "--uninstall", "--bpf-pin-dir", PIN_DIR)
    if uninstall.returncode != 0 or os.path.exists(PIN_DIR):
        fail(name, f"--uninstall: exit {uninstall.returncode}: {uninstall.stderr.strip()}")


def main():
    start = time.monotonic()
    if os.geteuid() != 0:
        skip("needs root (podman with its own storage, network namespaces, cgroups, BPF)")
    for tool in ("podman", "runc", "unshare", "nsenter", "curl", "ip"):
        if not shutil.which(tool):
            skip(f"no {tool} (scripts/setup.sh installs it)")
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        skip("no kubectl to render the manifests (Debian: kubernetes-client)")
    cgroup2 = cgroup2_mount()
    if not cgroup2 or not os.path.ismount("/sys/fs/bpf"):
        skip("no cgroup2 or bpffs mounted (scripts/setup.sh mounts them)")

    tag = run([os.path.join(ROOT, "scripts", "image.sh"), "--print-tag"], check=True).stdout.strip()
    version = tag.split(":")[1]
    image = "localhost/" + tag
    default = rendered_daemonset(kubectl, "default")
    demo = rendered_daemonset(kubectl, "demo")
    minimal = rendered_daemonset(kubectl, "minimal")
    if container_of(default, "meshlaned")["image"] != image:
        fail("manifests", f"the default profile runs {container_of(default, 'meshlaned')['image']}, image.sh builds {image}")

    def on_signal(signum, frame):
        raise SystemExit(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        os.makedirs(WORK)
        setup_podman()
        build_image(tag)
        files, links = archive_contents(image)
        load = podman("load", "-q", "-i", f"{WORK}/meshlane-image.tar")
        if load.returncode != 0:
            raise RuntimeError(f"podman load: {load.stderr.strip()}")
        check_contents(image, files, links)
        check_commands(image, version.split("-")[0], container_of(default, "meshlaned"))
        check_install_cni(image, default, version)

        # A namespace of the test with a veth pair: the uplink end for DPDK.
        run(["ip", "netns", "add", NETNS], check=True)
        run(["ip", "-n", NETNS, "link", "add", f"{NETNS}a", "type", "veth", "peer", "name", f"{NETNS}b"], check=True)
        for link in ("lo", f"{NETNS}a", f"{NETNS}b"):
            run(["ip", "-n", NETNS, "link", "set", link, "up"], check=True)
        pods = f"{cgroup2}/{PREFIX}/pods"
        os.makedirs(pods)
        document = {
            "version": 1,
            "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24", "pod_cgroup": pods},
            "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24"}],
            "services": [{"name": "web", "vip": "198.19.128.10",
                          "ports": [{"name": "http", "port": 80, "protocol": "tcp", "target_port": 8080}],
                          "backends": [{"ip": "198.18.2.20", "port": 8080, "weight": 1, "node": "node2"}]}],
            "tunables": {"workers": 1, "idle_policy": "adaptive"},
            "dataplane": {"uplink": {"interface": f"{NETNS}a", "driver": "af_packet"}, "pod_driver": "af_packet",
                          "eal_args": ["--no-huge", "-m", "128"]},
        }
        # The default profile's documents use an af_xdp uplink (XDP socket, UMEM: NET_RAW,
        # IPC_LOCK, SYS_ADMIN for libxdp), the demo's af_packet.
        document["dataplane"]["uplink"]["driver"] = "af_xdp"
        run_agent(image, default, "default", document, expect_dataplane=True)
        document["dataplane"]["uplink"]["driver"] = "af_packet"
        run_agent(image, demo, "demo", document, expect_dataplane=True)
        del document["dataplane"]
        run_agent(image, minimal, "minimal", document, expect_dataplane=False)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        fail("setup", str(error))
    finally:
        cleanup()
    print(f"{len(failures)} failures, {time.monotonic() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
