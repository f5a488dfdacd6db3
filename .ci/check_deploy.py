#!/usr/bin/env python3
"""Checks the deployment files against the binary they deploy.

- every flag the Dockerfile and the Deployment pass exists in `turnflow serve --help`;
- the probes hit /healthz and /readyz on the container's port;
- a WebRTC port is a UDP containerPort, announced with --webrtc-candidate, and EXPOSEd;
- terminationGracePeriodSeconds exceeds --drain-timeout plus the preStop pause;
- the container runs as the non-root user the image creates;
- every manifest parses and kustomization lists them all.
"""
import re
import subprocess
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent
binary = root / "target" / "debug" / "turnflow"
help_text = subprocess.run(
    [str(binary), "serve", "--help"], capture_output=True, text=True, check=True
).stdout
errors = []


def check(condition, message):
    if not condition:
        errors.append(message)


def flags(args):
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def seconds(value):
    match = re.fullmatch(r"(\d+)(ms|s|m)", value)
    check(match is not None, f"duration {value!r} is not NUMBER(ms|s|m)")
    if not match:
        return 0
    n, unit = int(match.group(1)), match.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


dockerfile = (root / "Dockerfile").read_text()
cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
check(cmd is not None, "Dockerfile has no exec-form CMD")
if cmd:
    for flag in flags(yaml.safe_load(cmd.group(1))):
        check(f"{flag} " in help_text or f"{flag}=" in help_text, f"Dockerfile CMD: unknown flag {flag}")
user = re.search(r"^USER (\d+)$", dockerfile, re.M)
check(user is not None and user.group(1) != "0", "Dockerfile must switch to a numeric non-root USER")

manifests = {}
for path in sorted((root / "deploy" / "kubernetes").glob("*.yaml")):
    manifests[path.name] = yaml.safe_load(path.read_text())
kustomization = manifests.pop("kustomization.yaml")
check(sorted(kustomization["resources"]) == sorted(manifests), "kustomization.yaml must list every manifest")
kinds = {m["kind"] for m in manifests.values()}
for kind in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]:
    check(kind in kinds, f"no {kind} manifest")

deployment = next(m for m in manifests.values() if m["kind"] == "Deployment")
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
args = container["args"]
check(args[0] == "serve", "the container must run `serve`")
for flag in flags(args):
    check(f"{flag} " in help_text or f"{flag}=" in help_text, f"Deployment args: unknown flag {flag}")
values = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
drain = seconds(values.get("drain-timeout", "10m"))
pause = 0
pre_stop = container.get("lifecycle", {}).get("preStop", {})
if "exec" in pre_stop:
    pause = int(pre_stop["exec"]["command"][-1])
grace = pod["terminationGracePeriodSeconds"]
check(grace > drain + pause, f"terminationGracePeriodSeconds {grace} must exceed drain {drain} + preStop {pause}")
port = int(values["listen"].rsplit(":", 1)[1])
check(container["ports"][0]["containerPort"] == port, "containerPort must match --listen")
if "webrtc-udp" in values:
    udp = int(values["webrtc-udp"].rsplit(":", 1)[1])
    udp_ports = [p for p in container["ports"] if p.get("protocol") == "UDP"]
    check(
        any(p["containerPort"] == udp for p in udp_ports),
        "--webrtc-udp needs a UDP containerPort of the same number",
    )
    check("webrtc-candidate" in values, "--webrtc-udp on 0.0.0.0 needs --webrtc-candidate")
    exposed = re.findall(r"^EXPOSE (\d+)/udp$", dockerfile, re.M)
    check(str(udp) in exposed, f"the Dockerfile must EXPOSE {udp}/udp")
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe must be /healthz")
check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe must be /readyz")
check(pod["securityContext"]["runAsUser"] == int(user.group(1)) if user else False, "runAsUser must be the image's user")

if errors:
    print("\n".join(f"deploy: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"deploy: {len(manifests)} manifests and the Dockerfile agree with `turnflow serve --help`")
