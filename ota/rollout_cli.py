"""``urbanedge ota rollout``: point a cohort at a release, watch the devices' reports, stop it
when too many fail.

Gateways read a signed rollout pointer (``rollouts/gateway.json``) and decide themselves
whether they are in the cohort. Nodes cannot run TUF: for ``--kind node-<hw>`` the cohort is
chosen here, from the nodes in service (``--inventory``, or ``--node ID@SITE``) with the same
bucketing, and each node in it gets its signed manifest; halting withdraws the manifests of
the nodes that have not started.

The watch reads the IOC's store of verified records (the devices' sealed ``ota_status``
events), so what halts a rollout is what the devices themselves signed, not what a server
believes it sent. Exit codes: 0 the watch ended without passing the threshold, 1 the rollout
was halted, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ota.rollout import Tally, should_halt, tally


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("rollout", help="roll a release out to a cohort and halt it when failures pass a threshold")
    p.add_argument("--repo", required=True, type=Path, help="repository directory")
    p.add_argument("--keys", required=True, type=Path, help="keys directory")
    p.add_argument("--kind", required=True, help="gateway or node-<hw>")
    p.add_argument("--release", help="target path of the release (default: the current rollout's)")
    p.add_argument("--percent", type=int, help="share of devices 0..100 (default: the current rollout's)")
    p.add_argument("--site", action="append", help="only devices at this site (repeatable)")
    p.add_argument("--store", required=True, help="the IOC store: sqlite:PATH or postgresql://…")
    p.add_argument("--max-failures", type=float, default=0.1, help="halt above this share of failed devices")
    p.add_argument("--min-finished", type=int, default=1, help="devices that must have finished before halting")
    p.add_argument("--watch", type=float, default=0.0, help="seconds to keep watching (0: look once)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between looks")
    p.add_argument("--json", action="store_true", help="print the final tally as JSON")
    n = p.add_argument_group("nodes (--kind node-<hw>)")
    n.add_argument("--version", help="the node bundle's version (ota add-node-bundle)")
    n.add_argument("--counter", type=int, help="its release counter")
    n.add_argument("--key", type=Path, help="the node-release key (KEYS/node-release.key.pem)")
    n.add_argument("--inventory", type=Path, help="the provisioning inventory: the nodes in service and their sites")
    n.add_argument("--node", action="append", default=[], metavar="ID@SITE", help="a node (repeatable)")
    p.set_defaults(func=cmd_rollout)


def _records(store_url: str) -> list[dict[str, Any]]:
    from ioc.store import open_store

    out: list[dict[str, Any]] = []
    with open_store(store_url) as store:
        for source in store.stats():
            after = -1
            while True:
                page = store.records(source, after_seq=after, limit=5000)
                if not page:
                    break
                out.extend(r for r in page if r.get("type") == "event")
                after = int(page[-1]["seq"])
    return out


def _read_target(targets_dir: Path, path: str, sha256: str) -> bytes:
    # Consistent snapshots: the file is stored under its hash (docs/ota.md).
    dirname, _, base = path.rpartition("/")
    return (targets_dir / dirname / f"{sha256}.{base}").read_bytes()


def _summary(t: Tally) -> dict[str, Any]:
    return {"release": t.release, "succeeded": t.succeeded, "failed": t.failed, "in_progress": t.in_progress,
            "failure_ratio": round(t.failure_ratio(), 3), "reasons": t.reasons}


def _watch(args: argparse.Namespace, release: str, halt: Callable[[Tally], str]) -> int:
    """Tally the devices' reports for ``release`` every ``--interval`` for ``--watch`` seconds;
    past the threshold, ``halt`` stops the rollout (and says how). Exit 1 halted, 0 not."""
    deadline = time.monotonic() + args.watch
    while True:
        t = tally(_records(args.store), release)
        print(f"  {len(t.succeeded)} succeeded, {len(t.failed)} failed, {len(t.in_progress)} in progress", flush=True)
        stop, why = should_halt(t, max_failure_ratio=args.max_failures, min_finished=args.min_finished)
        if stop:
            print(f"HALTED: {why}{halt(t)}")
            for dev, reason in sorted(t.reasons.items()):
                print(f"  {dev}: {reason}")
        if stop or time.monotonic() >= deadline:
            if args.json:
                print(json.dumps(_summary(t)))
            return 1 if stop else 0
        time.sleep(args.interval)


def _nodes(args: argparse.Namespace) -> list[tuple[str, str]]:
    nodes = []
    for spec in args.node:
        node, _, site = spec.partition("@")
        nodes.append((node, site))
    if args.inventory is not None:
        from provisioning.inventory import Inventory

        inv = Inventory(args.inventory)
        ids = sorted({e.device_id for e in inv.entries() if e.kind == "node"})
        nodes += [(i, cur.site) for i in ids if (cur := inv.current(i)) is not None]
    return nodes


def cmd_node_rollout(args: argparse.Namespace) -> int:
    from ota.node_cli import BadInput, write_node_manifest
    from ota.release_meta import Rollout
    from ota.rollout import node_cohort

    hw = args.kind.removeprefix("node-")
    if not (args.version and args.counter is not None and args.key and args.percent is not None):
        print("error: a node rollout needs --version, --counter, --key and --percent", file=sys.stderr)
        return 2
    nodes = _nodes(args)
    if not nodes:
        print("error: no nodes: give --inventory or --node ID@SITE", file=sys.stderr)
        return 2
    # The id is the release's: widening the same release keeps every node's bucket.
    rollout = Rollout(id=f"r-{args.kind}-{args.version}", release=args.version,
                      sites=tuple(args.site) if args.site else None, percent=args.percent, state="active")
    cohort = node_cohort(nodes, rollout)
    try:
        for node in cohort:
            write_node_manifest(args.repo, args.key, node, hw, args.version, args.counter)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"rollout {rollout.id}: node release {args.version} to {len(cohort)} of {len(nodes)} nodes")

    def withdraw(t: Tally) -> str:
        withdrawn = [n for n in cohort if n not in t.latest]
        for node in withdrawn:
            (args.repo / "nodes" / f"{node}.manifest").unlink(missing_ok=True)
        return f"; manifests withdrawn from {len(withdrawn)} nodes that had not started"

    return _watch(args, args.version, withdraw)


def cmd_rollout(args: argparse.Namespace) -> int:
    if not 0.0 <= args.max_failures <= 1.0:
        print("error: --max-failures: must be between 0 and 1", file=sys.stderr)
        return 2
    if args.kind.startswith("node-"):
        return cmd_node_rollout(args)
    from ota.release_meta import parse_rollout
    from ota.repo import Repo, RepoError, rollout_target

    try:
        repo = Repo.open(args.repo, args.keys)
        current = None
        tf = repo.target_files().get(rollout_target(args.kind))
        if tf is not None:
            current = parse_rollout(_read_target(repo.targets_dir, rollout_target(args.kind), tf.hashes["sha256"]))
        release = args.release or (current.release if current else None)
        percent = args.percent if args.percent is not None else (current.percent if current else None)
        if release is None or percent is None:
            print("error: --release and --percent are needed for a first rollout", file=sys.stderr)
            return 2
        same = current is not None and current.release == release
        rollout = repo.set_rollout(args.kind, release, percent, sites=args.site,
                                   rollout_id=current.id if same and current else None)
        repo.publish()
    except RepoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    version = repo.target_files()[release].unrecognized_fields.get("custom", {}).get("urbanedge", {}).get("version")
    where = "sites " + ", ".join(args.site) if args.site else "all sites"
    print(f"rollout {rollout.id}: {release} to {percent}% of {where}")

    def halt_pointer(_t: Tally) -> str:
        halted = Repo.open(args.repo, args.keys)
        halted.set_rollout(args.kind, release, percent, sites=args.site, state="halted", rollout_id=rollout.id)
        halted.publish()
        return ""

    return _watch(args, str(version or release), halt_pointer)
