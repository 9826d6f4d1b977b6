"""The ``workbench`` command line (noun-verb subcommands).

Secrets never travel as flags: tokens are printed once to stdout, or read from
files / the environment.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from ._version import __version__
from .errors import WorkbenchError


def _service(config_path: str, start_workers: bool = False):
    from .node.service import NodeService
    from .node.settings import NodeConfig

    return NodeService(NodeConfig.load(config_path), start_workers=start_workers)


@contextlib.contextmanager
def _opened(config_path: str, start_workers: bool = False) -> Iterator:
    """The node's service for one command, closed however the command ends."""
    service = _service(config_path, start_workers)
    try:
        yield service
    finally:
        service.close()


config_option = click.option("--config", "config_path", required=True, envvar="WORKBENCH_NODE_CONFIG",
                             type=click.Path(exists=True, dir_okay=False),
                             help="The node's TOML config (or $WORKBENCH_NODE_CONFIG).")


@click.group()
@click.version_option(__version__, prog_name="workbench")
def main() -> None:
    """Workbench: remote handles to private data; only privacy-safe answers leave a node."""


# ---------------------------------------------------------------- node


@main.group()
def node() -> None:
    """Run and administer a data node."""


@node.command("serve")
@config_option
@click.option("--host", default=None, help="Interface to bind (default from config: 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default from config: 8765).")
@click.option("--log-level", default="warning", show_default=True)
def node_serve(config_path: str, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the node's API (/v1, OpenAPI at /v1/openapi.json)."""
    import uvicorn

    from .server import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = _service(config_path, start_workers=True)
    app = create_app(service)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic collector's scans.
    gc.collect()
    gc.freeze()
    host = host or service.config.node.host
    port = port or service.config.node.port
    click.echo(f"workbench node {service.name!r} serving on http://{host}:{port}/v1", err=True)
    stop_supernode = None
    if service.config.fl.superlink:  # [fl] superlink = ...: this node also runs a Flower SuperNode
        from .channels.fl.deployment import start_node_supernode

        stop_supernode = start_node_supernode(service.config, Path(config_path), host, port)
    try:
        # access_log off: request lines carry no tokens, but keep logs to what the owner needs.
        # proxy_headers off: X-Forwarded-For is not trusted (and parsing it cost ~20% of a replay's CPU).
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, proxy_headers=False,
                    ws="none")  # no websockets: nothing to serve, and no deprecation warnings from importing them
    finally:
        if stop_supernode is not None:
            stop_supernode()
        service.close()


@node.command("check")
@config_option
def node_check(config_path: str) -> None:
    """Validate the config and each dataset against its public metadata."""
    with _opened(config_path) as service:
        for entry in service.catalog.entries():
            click.echo(f"ok       {entry.name:20s} {entry.info.tier:8s} {entry.version}")
        problems = service.catalog.problems()
        for name, problem in problems.items():
            click.echo(f"PROBLEM  {name:20s} {problem}")
    sys.exit(1 if problems else 0)


@node.group("user")
def user() -> None:
    """Users of this node (owner, analyst, auditor)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["analyst", "owner", "auditor"]), required=True)
@config_option
def user_add(name: str, role: str, config_path: str) -> None:
    """Add a user and print their token once (give it to them privately)."""
    from .node import admin

    with _opened(config_path) as service:
        click.echo(admin.add_user(service.store, service.authority, name, role))


@user.command("token")
@click.argument("name")
@click.option("--revoke-old", is_flag=True, help="Invalidate every earlier token of this user.")
@click.option("--ttl-days", type=float, default=None, help="Token lifetime (default from config).")
@click.option("--dpop-jkt", default=None, help="Bind the token to the analyst's DPoP key (their 'workbench dpop-key').")
@config_option
def user_token(name: str, revoke_old: bool, ttl_days: float | None, dpop_jkt: str | None, config_path: str) -> None:
    """Issue a new token for a user (printed once)."""
    from .node import admin

    with _opened(config_path) as service:
        click.echo(admin.issue_token(service.store, service.authority, name, revoke_old=revoke_old,
                                     ttl_s=None if ttl_days is None else ttl_days * 86400, dpop_jkt=dpop_jkt))


@user.command("list")
@config_option
def user_list(config_path: str) -> None:
    from .node import admin

    with _opened(config_path) as service:
        for u in admin.list_users(service.store):
            click.echo(f"{u['name']:20s} {u['role']:8s} {'disabled' if u['disabled'] else ''}")


@user.command("disable")
@click.argument("name")
@config_option
def user_disable(name: str, config_path: str) -> None:
    """Disable a user: every token of theirs stops working (within 2 s on a running node)."""
    from .node import admin

    with _opened(config_path) as service:
        admin.set_disabled(service.store, name, True)
    click.echo(f"disabled {name}")


@user.command("enable")
@click.argument("name")
@config_option
def user_enable(name: str, config_path: str) -> None:
    """Enable a disabled user again (their unrevoked tokens work again)."""
    from .node import admin

    with _opened(config_path) as service:
        admin.set_disabled(service.store, name, False)
    click.echo(f"enabled {name}")


@user.command("delete")
@click.argument("name")
@config_option
def user_delete(name: str, config_path: str) -> None:
    """Delete a user: tokens dead, live grants revoked; a user re-created under the name gets new tokens only."""
    from .node import admin

    with _opened(config_path) as service:
        revoked = admin.delete_user(service.store, name)
    click.echo(f"deleted {name} ({revoked} grants revoked)")


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["analyst", "owner", "auditor"]))
@config_option
def user_role(name: str, role: str, config_path: str) -> None:
    """Change a user's role; earlier tokens are revoked and the new token is printed (shown once)."""
    from .node import admin

    with _opened(config_path) as service:
        token = admin.set_role(service.store, service.authority, name, role)
    click.echo(token)


@node.command("grant")
@click.argument("name")
@click.argument("dataset")
@click.option("--purpose", required=True, help="What the analyst may use the data for.")
@click.option("--epsilon", type=float, required=True)
@click.option("--delta", type=float, default=0.0, show_default=True)
@click.option("--expires-days", type=float, default=None, help="Days until the grant expires (default: never).")
@config_option
def node_grant(name: str, dataset: str, purpose: str, epsilon: float, delta: float, expires_days: float | None,
               config_path: str) -> None:
    """Grant user NAME a privacy budget on DATASET for a purpose."""
    from .node import admin
    from .node.agreement import agreements

    with _opened(config_path) as service:
        grant = admin.add_grant(service.store, name, dataset, purpose, epsilon, delta, expires_days,
                                known_datasets=set(service.config.datasets),
                                agreement=agreements(service.config).get(dataset))
        click.echo(f"grant {grant.grant_id}: {name} on {dataset} for {purpose!r}: epsilon={epsilon:g} delta={delta:g}")


@node.command("grants")
@config_option
@click.option("--user", default=None)
def node_grants(config_path: str, user: str | None) -> None:
    """List grants with what each has spent and left."""
    from .node import admin

    with _opened(config_path) as service:
        for g in admin.list_grants(service.store, user=user):
            state = "revoked" if g.revoked else ""
            click.echo(f"{g.grant_id:4d} {g.user:12s} {g.dataset:16s} eps {g.epsilon_spent:.3g}/{g.epsilon:.3g} "
                       f"delta {g.delta_spent:.2g}/{g.delta:.2g} {g.purpose!r} {state}")


@node.command("revoke")
@click.argument("grant_id", type=int)
@config_option
def node_revoke(grant_id: int, config_path: str) -> None:
    """Revoke a grant."""
    from .node import admin

    with _opened(config_path) as service:
        admin.revoke_grant(service.store, grant_id)
        click.echo(f"grant {grant_id} revoked")


def _owner(service, name: str):
    """The owner acting through the CLI: must be an existing owner user (decisions are never anonymous)."""
    from .errors import NotAuthorized
    from .node.auth import Principal
    from .node.store import User

    with service.store.transaction("read") as session:
        user = session.query(User).filter_by(name=name).one_or_none()
    if user is None or user.role != "owner" or user.disabled:
        raise NotAuthorized(f"{name!r} is not an owner of this node.", code="not_authorized")
    return Principal(name=user.name, role=user.role)


as_option = click.option("--as", "as_owner", required=True, envvar="WORKBENCH_OWNER",
                         help="The owner deciding (an owner user of this node; or $WORKBENCH_OWNER).")


@node.command("requests")
@config_option
@click.option("--status", type=click.Choice(["pending", "approved", "denied", "withdrawn"]), default=None)
def node_requests(config_path: str, status: str | None) -> None:
    """List access requests."""
    from .node import governance
    from .node.auth import Principal

    with _opened(config_path) as service:
        for r in governance.list_requests(service.store, Principal("owner-cli", "owner"), status):
            click.echo(f"{r.request_id:4d} {r.status:9s} {r.user:12s} {r.dataset:14s} eps {r.epsilon:g} "
                       f"delta {r.delta:g} {r.purpose!r} {r.note!r}" + (f" -> grant {r.grant_id}" if r.grant_id else "")
                       + (f" ({r.reason})" if r.reason else ""))


@node.command("approve")
@click.argument("request_id", type=int)
@as_option
@config_option
@click.option("--epsilon", type=float, default=None, help="Grant less than asked (default: as asked).")
@click.option("--delta", type=float, default=None)
@click.option("--expires-days", type=float, default=None)
@click.option("--reason", default="")
def node_approve(request_id: int, as_owner: str, config_path: str, epsilon, delta, expires_days, reason) -> None:
    """Approve an access request (creates the grant). Nobody approves their own request."""
    from .node import governance
    from .node.agreement import agreements
    from .protocol import ApproveBody

    with _opened(config_path) as service:
        info = governance.approve_request(service.store, _owner(service, as_owner), request_id,
                                          ApproveBody(epsilon=epsilon, delta=delta, expires_days=expires_days,
                                                      reason=reason), agreements(service.config))
        click.echo(f"request {request_id} approved: grant {info.grant_id} for {info.user} on {info.dataset}")


@node.command("deny")
@click.argument("request_id", type=int)
@as_option
@config_option
@click.option("--reason", required=True, help="Told to the analyst.")
def node_deny(request_id: int, as_owner: str, config_path: str, reason: str) -> None:
    """Deny an access request, with a reason."""
    from .node import governance
    from .protocol import DenyBody

    with _opened(config_path) as service:
        governance.deny_request(service.store, _owner(service, as_owner), request_id, DenyBody(reason=reason))
        click.echo(f"request {request_id} denied")


@node.group("reviews")
def reviews_group() -> None:
    """Releases that DP does not cover, held for an owner's decision."""


@reviews_group.command("list")
@config_option
@click.option("--status", type=click.Choice(["pending", "approved", "rejected"]), default="pending",
              show_default=True)
def reviews_list(config_path: str, status: str) -> None:
    from .node import governance
    from .node.auth import Principal

    with _opened(config_path) as service:
        for r in governance.list_reviews(service.store, Principal("owner-cli", "owner"), status):
            click.echo(f"{r.review_id:4d} {r.status:9s} {r.user:12s} {r.dataset:14s} {r.channel}/{r.kind}")
            click.echo("     would release: " + json.dumps(r.summary, default=str)[:2000])


def _decide_review(review_id: int, as_owner: str, config_path: str, approve: bool, reason: str) -> None:
    from .node import governance

    with _opened(config_path) as service:
        governance.decide_review(service.store, _owner(service, as_owner), review_id, approve, reason)
        click.echo(f"review {review_id} {'approved' if approve else 'rejected'}")


@reviews_group.command("approve")
@click.argument("review_id", type=int)
@as_option
@config_option
@click.option("--reason", default="")
def reviews_approve(review_id: int, as_owner: str, config_path: str, reason: str) -> None:
    """Let a held release leave (after reading what it contains)."""
    _decide_review(review_id, as_owner, config_path, True, reason)


@reviews_group.command("reject")
@click.argument("review_id", type=int)
@as_option
@config_option
@click.option("--reason", required=True)
def reviews_reject(review_id: int, as_owner: str, config_path: str, reason: str) -> None:
    _decide_review(review_id, as_owner, config_path, False, reason)


def _jobs_commands() -> None:
    from .channels.jobs.commands import commands

    node.add_command(commands(config_option, as_option, _opened, _owner))


_jobs_commands()


@node.command("why")
@click.argument("user_name")
@click.argument("dataset")
@config_option
@click.option("--epsilon", type=float, default=0.1, show_default=True)
@click.option("--delta", type=float, default=0.0, show_default=True)
@click.option("--grant-id", type=int, default=None)
@click.option("--audit-seq", type=int, default=None, help="Also show this audit record (e.g. a refusal).")
def node_why(user_name: str, dataset: str, config_path: str, epsilon: float, delta: float, grant_id: int | None,
             audit_seq: int | None) -> None:
    """Explain why USER releasing on DATASET at this price would be allowed or refused."""
    from .node import audit, governance

    with _opened(config_path) as service:
        if audit_seq is not None:
            for rec in audit.records(service.store):
                if rec["seq"] == audit_seq:
                    click.echo(f"audit #{rec['seq']} {rec['ts']} {rec['actor']} {rec['action']} {rec['dataset']}: "
                               f"{json.dumps(rec['details'], default=str)}")
        result = governance.explain_for(service, user_name, dataset, epsilon, delta, grant_id)
    for check in result.checks:
        click.echo(f"  [{'ok' if check.ok else 'NO'}] {check.check}: {check.detail}")
    verdict = "ALLOWED" if result.allowed else f"REFUSED ({result.code})"
    click.echo(f"{verdict}: {user_name} releasing epsilon={epsilon:g}, delta={delta:g} on {dataset}")
    sys.exit(0 if result.allowed else 1)


@node.group("mock")
def mock_group() -> None:
    """Public DP mocks of datasets (free for analysts; paid once from the dataset's budget)."""


@mock_group.command("publish")
@click.argument("dataset")
@click.option("--epsilon", type=float, required=True, help="Paid once from the dataset's lifetime budget.")
@click.option("--rows", type=int, default=1000, show_default=True)
@click.option("--method", type=click.Choice(["mst", "aim", "fixed", "independent"]), default="mst",
              show_default=True)
@click.option("--bins", type=int, default=16, show_default=True, help="Bins per numeric column (public bounds).")
@click.option("--as", "as_owner", default=None, help="The publishing owner (default: the only owner user).")
@click.option("--progress/--no-progress", default=True)
@config_option
def mock_publish(dataset: str, epsilon: float, rows: int, method: str, bins: int, as_owner: str | None,
                 progress: bool, config_path: str) -> None:
    """Publish DATASET's DP mock: synthetic rows every user may fetch for free (ds.mock())."""
    from .channels.synth.mocks import publish_with_progress
    from .channels.synth.wire import SynthSpec

    with _opened(config_path) as service:
        info = publish_with_progress(service, dataset, SynthSpec(method=method, rows=rows, bins=bins), epsilon,
                                     as_owner, progress=progress)
        click.echo(f"published the DP mock of {dataset}: {info.rows} rows, {info.method}, epsilon={info.epsilon:g} "
                   f"(version {info.dataset_version})")


@node.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@config_option
def audit_verify(config_path: str) -> None:
    """Walk the hash chain; exit 1 if any record was changed, removed or reordered."""
    from .node import audit

    with _opened(config_path) as service:
        result = audit.verify(service.store)
    if result.ok:
        click.echo(f"audit log OK: {result.records} records, chain intact")
    else:
        click.echo(f"audit log TAMPERED at record {result.first_bad_seq}: {result.reason}", err=True)
        sys.exit(1)


@audit_group.command("export")
@config_option
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="-", help="File (default stdout).")
def audit_export(config_path: str, output: str) -> None:
    """Export the audit log as JSON lines, oldest first."""
    from .node import audit

    with _opened(config_path) as service:
        rows = list(audit.records(service.store))
    with click.open_file(output, "w") as fh:
        for rec in reversed(rows):
            fh.write(json.dumps(rec, default=str) + "\n")


# ---------------------------------------------------------------- analyst side


@main.command("login")
@click.argument("url")
@click.option("--name", default=None, help="A name for this node in your config (default: the node's name).")
def login(url: str, name: str | None) -> None:
    """Store a token for the node at URL (read from $WORKBENCH_TOKEN or typed, hidden)."""
    from . import connect
    from .config import save_connection

    token = os.environ.get("WORKBENCH_TOKEN") or click.prompt("Token", hide_input=True)
    node_handle = connect(url, token=token)
    info = node_handle.info()
    path = save_connection(name or info["name"], url, token)
    click.echo(f"Saved {info['name']} ({url}) as user {info['user']} in {path}")


@main.command("dpop-key")
def dpop_key() -> None:
    """Print the thumbprint of your DPoP key (created 0600 beside the client config on first use).

    Send it to a node's owner, who binds your token to it: 'workbench node user token NAME --dpop-jkt THUMBPRINT'.
    """
    from .client.dpop import DPoPKey, default_key_path

    click.echo(f"{DPoPKey.load_or_create().thumbprint}  ({default_key_path()})")


@main.group("directory")
def directory() -> None:
    """A consortium's signed directory of member nodes (docs/ecosystem.md)."""


@directory.command("key")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="The consortium's Ed25519 private key (PEM; created 0600 if missing).")
def directory_key(key_path: str) -> None:
    """Print the consortium's public JWK: members and readers pin it (give it to them out of band)."""
    from .directory import load_or_create_signing_key, public_jwk

    click.echo(json.dumps(public_jwk(load_or_create_signing_key(key_path))))


@directory.command("sign")
@click.argument("members_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--valid-days", type=float, default=90.0, show_default=True)
def directory_sign(members_file: str, key_path: str, out_path: str, valid_days: float) -> None:
    """Sign MEMBERS_FILE (TOML: consortium = "...", [[members]] name, url[, catalogue_url]) into a directory.

    Each member's signing keys are read from its node's /v1/jwks unless the file lists them.
    """
    import tomllib

    import httpx

    from .directory import Member, load_or_create_signing_key, sign

    raw = tomllib.loads(Path(members_file).read_text())
    members = []
    for m in raw.get("members", []):
        url = m["url"].rstrip("/")
        keys = m.get("signing_keys") or httpx.get(url + "/v1/jwks", timeout=30).raise_for_status().json()["keys"]
        members.append(Member(name=m["name"], url=url, catalogue_url=m.get("catalogue_url", url + "/v1/catalog.jsonld"),
                              signing_keys=keys))
    token = sign(raw["consortium"], members, load_or_create_signing_key(key_path), valid_days)
    Path(out_path).write_text(token + "\n")
    click.echo(f"signed directory of {len(members)} members for {raw['consortium']} -> {out_path}")


@main.command("demo", context_settings={"ignore_unknown_options": True})
@click.option("--lab/--no-lab", default=True, help="Also start JupyterLab with the notebooks.")
@click.option("--port", default=8765, show_default=True, help="First node port (three nodes: port..port+2).")
@click.option("--lab-port", default=8888, show_default=True)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Where demo data and state live (default $WORKBENCH_HOME/demo).")
@click.option("--reset", is_flag=True,
              help="Forget every demo budget, release and mock first (and the embedded node's); data stays.")
@click.argument("lab_args", nargs=-1, type=click.UNPROCESSED)
def demo(lab: bool, port: int, lab_port: int, root: str | None, reset: bool, lab_args: tuple[str, ...]) -> None:
    """Start three demo hospital nodes (and JupyterLab with the teaching notebooks).

    Options after '--' go to JupyterLab, e.g. 'workbench demo -- --ServerApp.token=abc'.
    As root, JupyterLab gets '--allow-root'.
    """
    from .demo.launcher import run_demo

    sys.exit(run_demo(lab=lab, first_port=port, lab_port=lab_port, root=Path(root) if root else None,
                      lab_args=tuple(lab_args), reset=reset))


# ---------------------------------------------------------------- HE aggregator


@main.group()
def aggregator() -> None:
    """Run the secure-aggregation server (adds nodes' ciphertexts; holds no key)."""


@aggregator.command("serve")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="Folder with the node registry (nodes.json).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8780, show_default=True, type=int)
@click.option("--name", default="aggregator", show_default=True)
@click.option("--min-parties", default=2, show_default=True, type=int)
def aggregator_serve(state_dir: str, host: str, port: int, name: str, min_parties: int) -> None:
    """Serve the aggregator's API (/v1)."""
    from .aggregator.app import serve

    click.echo(f"workbench aggregator {name!r} serving on http://{host}:{port}/v1", err=True)
    serve(Path(state_dir), host=host, port=port, name=name, min_parties=min_parties)


@aggregator.command("add-node")
@click.argument("name")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False))
def aggregator_add_node(name: str, state_dir: str) -> None:
    """Register node NAME (or rotate its token); prints the token for that node's owner, once."""
    from .aggregator.app import add_node

    click.echo(add_node(Path(state_dir), name))


# ---------------------------------------------------------------- federated learning (docs/federated_learning.md)


@main.group("fl")
def fl_group() -> None:
    """Federated learning with Flower: the SuperLink that nodes' SuperNodes connect to."""


@fl_group.command("superlink")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the Fleet/Control APIs.")
@click.option("--port", default=9093, show_default=True, type=int)
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the SuperLink's database and Flower home.")
@click.option("--ssl-ca-certfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--auth-list-public-keys", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV of SuperNode public keys: only these SuperNodes may connect (needs TLS).")
def fl_superlink(host: str, port: int, state_dir: str, ssl_ca_certfile, ssl_certfile, ssl_keyfile,
                 auth_list_public_keys) -> None:
    """Run a Flower SuperLink (loopback without TLS is for tests and demos only)."""
    from .channels.fl.deployment import run_superlink_foreground

    certificates = None
    if ssl_ca_certfile or ssl_certfile or ssl_keyfile:
        if not (ssl_ca_certfile and ssl_certfile and ssl_keyfile):
            raise click.UsageError("TLS needs --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile together.")
        certificates = (Path(ssl_ca_certfile), Path(ssl_certfile), Path(ssl_keyfile))
    if host not in ("127.0.0.1", "localhost", "::1") and certificates is None:
        raise click.UsageError("Off loopback the SuperLink needs TLS (--ssl-*); see docs/federated_learning.md.")
    click.echo(f"workbench fl superlink on {host}:{port}", err=True)
    sys.exit(run_superlink_foreground(port, Path(state_dir), host, certificates,
                                      Path(auth_list_public_keys) if auth_list_public_keys else None))


# ---------------------------------------------------------------- scheduled analyses (docs/teaching.md)


@main.command("schedule")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", required=True, help="Folder for this run; strftime codes allowed, e.g. 'reports/%Y-%m'.")
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A papermill parameter (repeatable; VALUE parsed as YAML). output_path defaults to the folder.")
@click.option("--cron", default=None, metavar="'MIN HOUR DOM MON DOW'",
              help="Print the crontab line that runs this schedule, instead of running it now.")
def schedule(notebook: str, output: str, parameters: tuple[tuple[str, str], ...], cron: str | None) -> None:
    """Run a parameterised NOTEBOOK once with papermill into a dated folder; exit 1 with its error if it fails."""
    import shlex
    from datetime import datetime

    if cron:
        args = [sys.executable, "-m", "workbench.cli", "schedule", str(Path(notebook).resolve()), "--output", output]
        args += [a for name, value in parameters for a in ("-p", name, value)]
        log = Path(output.split("%", 1)[0] or ".").resolve() / "schedule.log"
        # The log's folder is created first: a redirect into a missing folder fails before the job starts.
        line = (f"{cron} cd {shlex.quote(os.getcwd())} && mkdir -p {shlex.quote(str(log.parent))} && "
                f"{shlex.join(args)} >> {shlex.quote(str(log))} 2>&1")
        click.echo(line.replace("%", r"\%"))  # cron turns an unescaped % into a newline
        return
    import papermill
    import yaml

    folder = Path(datetime.now().strftime(output))
    folder.mkdir(parents=True, exist_ok=True)
    def parse(value: str):  # numbers as papermill -p parses them (YAML 1.1 reads 1e-5 as text), else YAML
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return None if value == "None" else yaml.safe_load(value)

    values = {name: parse(value) for name, value in parameters}
    values.setdefault("output_path", str(folder))
    try:
        papermill.execute_notebook(notebook, str(folder / Path(notebook).name), parameters=values,
                                   progress_bar=False)
    except papermill.PapermillExecutionError as exc:
        click.echo(f"schedule: {notebook} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", err=True)
        sys.exit(1)
    click.echo(f"schedule: {notebook} ran; results in {folder}")


def _entry() -> None:
    try:
        main(standalone_mode=True)
    except WorkbenchError as exc:
        click.echo(f"error ({exc.code}): {exc.message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    _entry()
