#!/usr/bin/env python3
"""Checks compose.yaml without a Docker engine: it parses, the services it
depends on exist, images are pinned, every keyledger service runs a real
subcommand, every environment variable set on a keyledger service is one
the binary reads (as listed by its own --help, plus the two it reads
directly), and no service publishes its internal listener's port."""
import re
import subprocess
import sys

import yaml

binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/keyledger"
with open("compose.yaml") as f:
    compose = yaml.safe_load(f)

problems = []
services = compose["services"]
subcommands = set()
read = {"KEYLEDGER_HASH_KEY", "RUST_LOG"}  # read from the environment, not flags
help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
for line in help_text.splitlines():
    m = re.match(r"\s+([a-z-]+)\s{2,}", line)
    if m and m.group(1) != "help":
        subcommands.add(m.group(1))
for sub in subcommands:
    out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True).stdout
    read.update(re.findall(r"\[env: ([A-Z_]+)[=\]]", out))

for name, service in services.items():
    for dep in service.get("depends_on", {}) or {}:
        if dep not in services:
            problems.append(f"{name}: depends on unknown service {dep}")
    image = service.get("image", "")
    if ":" not in image:
        problems.append(f"{name}: image {image!r} is not pinned to a tag")
    if "build" not in service:
        continue
    command = service.get("command", [])
    if not command or command[0] not in subcommands:
        problems.append(f"{name}: command {command} is not a keyledger subcommand ({sorted(subcommands)})")
    environment = service.get("environment", {}) or {}
    for var in environment:
        if var not in read:
            problems.append(f"{name}: sets {var}, which keyledger does not read ({sorted(read)})")
    # The internal listener (/v1/verify, /v1/auth, /metrics) must not be published.
    internal = str(environment.get("KEYLEDGER_INTERNAL_LISTEN", ""))
    if internal:
        port = internal.rsplit(":", 1)[-1]
        for mapping in service.get("ports", []) or []:
            published = str(mapping.get("target", "") if isinstance(mapping, dict) else mapping)
            if published.split("/")[0].rsplit(":", 1)[-1] == port:
                problems.append(f"{name}: publishes {mapping}, the internal listener's port {port}")

if problems:
    print("compose.yaml:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"compose.yaml: {len(services)} services checked; keyledger reads {sorted(read)}")
