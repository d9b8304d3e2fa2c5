#!/usr/bin/env python3
"""Checks compose.yaml without a Docker engine: it parses, the services it
depends on exist, images are pinned, every keyledger service runs a real
subcommand, every environment variable set on a keyledger service is one
the binary reads (as listed by its own --help, plus the two it reads
directly), no service publishes its internal listener's port (alone or
in a range, in the short or the long syntax), every file mounted from the
repository exists, and the monitoring profile's Prometheus scrapes each
keyledger service on the port it serves /metrics on (the API's internal
listener, `work`'s listener).

    check-compose.py [BINARY]      check compose.yaml
    check-compose.py --self-test   check the port matching against a table"""
import os
import re
import subprocess
import sys


def port_range(text):
    """The ports `9090` or `9000-9100` name (none for anything else)."""
    first, _, last = str(text).strip().partition("-")
    try:
        low = int(first)
        high = int(last) if last else low
    except ValueError:
        return range(0)
    return range(low, high + 1)


def container_ports(mapping):
    """The container ports one `ports:` entry publishes: the long syntax's
    `target`, or the last part of `[IP:][HOST:]CONTAINER[/PROTOCOL]`."""
    if isinstance(mapping, dict):
        return port_range(mapping.get("target", ""))
    return port_range(str(mapping).split("/")[0].rsplit(":", 1)[-1])


def publishes(mapping, port):
    return int(port) in container_ports(mapping)


SELF_TEST = [
    ("9090", True),
    (9090, True),
    ("9090:9090", True),
    ("9090:9090/tcp", True),
    ("127.0.0.1:19090:9090", True),
    ("[::1]:9090:9090", True),
    ("9000-9100", True),
    ("9000-9100:9000-9100", True),
    ("127.0.0.1:9000-9100:9000-9100/udp", True),
    ({"target": 9090, "published": "8000"}, True),
    ({"target": "9000-9100", "published": "9000-9100"}, True),
    ("8080:8080", False),
    ("9090:8080", False),
    ("9091-9099:9091-9099", False),
    ({"target": 8080, "published": 9090}, False),
]

if sys.argv[1:] == ["--self-test"]:
    wrong = [(m, expected) for m, expected in SELF_TEST if publishes(m, 9090) != expected]
    for mapping, expected in wrong:
        print(f"ports entry {mapping!r}: publishes 9090 should be {expected}")
    if wrong:
        sys.exit(1)
    print(f"check-compose.py: {len(SELF_TEST)} port mappings matched as expected")
    sys.exit(0)

import yaml  # noqa: E402  (the self-test needs no YAML parser)

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
        if not port.isdigit():
            problems.append(f"{name}: KEYLEDGER_INTERNAL_LISTEN {internal!r} has no port")
            continue
        for mapping in service.get("ports", []) or []:
            if publishes(mapping, port):
                problems.append(f"{name}: publishes {mapping}, which includes the internal listener's port {port}")


def metrics_port(service):
    """The port a keyledger service serves /metrics on: the internal
    listener when there is one (`serve`), else the listener (`work`'s own
    listener first)."""
    environment = service.get("environment", {}) or {}
    for var in ("KEYLEDGER_INTERNAL_LISTEN", "KEYLEDGER_WORK_LISTEN", "KEYLEDGER_LISTEN"):
        if environment.get(var) and (var != "KEYLEDGER_WORK_LISTEN" or service.get("command", [""])[0] == "work"):
            return str(environment[var]).rsplit(":", 1)[-1]
    return "8080"


for name, service in services.items():
    for volume in service.get("volumes", []) or []:
        source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
        if source.startswith("./") and not os.path.exists(source):
            problems.append(f"{name}: mounts {source}, which does not exist")
    if "monitoring" in (service.get("profiles") or []) and "prometheus" in service.get("image", ""):
        config = next(
            (str(v).split(":", 1)[0] for v in service.get("volumes", []) if str(v).endswith("prometheus.yml:ro")),
            None,
        )
        if config is None or not os.path.exists(config):
            problems.append(f"{name}: no prometheus.yml mounted from the repository")
            continue
        with open(config) as f:
            scrape = yaml.safe_load(f)
        targets = {
            target
            for job in scrape.get("scrape_configs", [])
            for static in job.get("static_configs", [])
            for target in static.get("targets", [])
        } | {
            f"{name}:{dns.get('port', '')}"
            for job in scrape.get("scrape_configs", [])
            for dns in job.get("dns_sd_configs", [])
            for name in dns.get("names", [])
        }
        for target in sorted(targets):
            host, _, port = target.rpartition(":")
            if host not in services:
                problems.append(f"{config}: scrapes {target}, but there is no service {host}")
            elif "build" in services[host] and port != metrics_port(services[host]):
                problems.append(
                    f"{config}: scrapes {target}, but {host} serves /metrics on port {metrics_port(services[host])}"
                )
        for other, candidate in services.items():
            if "build" in candidate and not any(t.rpartition(":")[0] == other for t in targets):
                problems.append(f"{config}: does not scrape the keyledger service {other}")

if problems:
    print("compose.yaml:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"compose.yaml: {len(services)} services checked; keyledger reads {sorted(read)}")
