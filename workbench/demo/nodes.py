"""Configurations and accounts for the demo nodes (the embedded one and ``workbench demo``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .data import HOSPITALS, IRIS_COLUMNS, PATIENT_COLUMNS, write_demo_data

DEMO_ANALYST = "analyst"
DEMO_OWNER = "owner"
DEMO_PURPOSE = "demo: learning differential privacy"
DEMO_GRANT = {"epsilon": 10.0, "delta": 1e-5}


def patients_entry(path: Path, hospital: str) -> dict:
    return {
        "path": str(path), "tier": "private", "licence": "proprietary (synthetic demo data)",
        "description": f"Patients of {hospital.replace('_', ' ').title()} (synthetic people, one row each)",
        "max_rows": 100_000,
        "privacy_unit": {"id_column": "patient_id", "max_contributions": 1},
        "budget": {"epsilon": 50.0, "delta": 1e-4},
        "columns": PATIENT_COLUMNS,
    }


def iris_entry(path: Path) -> dict:
    return {
        "path": str(path), "tier": "open", "licence": "CC-BY-4.0",
        "description": "Fisher's Iris measurements (UCI Machine Learning Repository, via scikit-learn)",
        "max_rows": 1_000, "columns": IRIS_COLUMNS,
    }


def write_config(root: Path, hospital: str, port: int = 8765, workers: int = 1) -> Path:
    """A node.toml for one demo hospital under ``root`` (data written beside it)."""
    data = write_demo_data(root / "data")
    config = {
        "node": {"name": hospital.replace("_", "-"), "state_dir": f"state/{hospital}", "port": port,
                 "workers": workers},
        "datasets": {"patients": patients_entry(data[hospital], hospital), "iris": iris_entry(data["iris"])},
    }
    path = root / f"{hospital}.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@dataclass(frozen=True)
class DemoAccounts:
    analyst_token: str
    owner_token: str


def ensure_accounts(service, datasets: list[str] | None = None) -> DemoAccounts:
    """The demo owner and analyst, and the analyst's grant on every private dataset.

    Tokens are kept (0600) in the node's state folder so a restarted demo reuses them.
    """
    from ..node import admin

    state = service.config.node.state_dir
    tokens = {}
    existing = {u["name"] for u in admin.list_users(service.store)}
    for name, role in ((DEMO_OWNER, "owner"), (DEMO_ANALYST, "analyst")):
        token_file = state / f"{name}.token"
        if name not in existing:
            token = admin.add_user(service.store, service.authority, name, role, actor="demo-setup")
        elif token_file.exists():
            token = token_file.read_text().strip()
        else:
            token = admin.issue_token(service.store, service.authority, name, actor="demo-setup")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        tokens[name] = token
    have = {(g.user, g.dataset) for g in admin.list_grants(service.store)}
    for name, ds in service.config.datasets.items():
        if ds.tier == "private" and (datasets is None or name in datasets) and (DEMO_ANALYST, name) not in have:
            admin.add_grant(service.store, DEMO_ANALYST, name, DEMO_PURPOSE, actor="demo-setup", **DEMO_GRANT)
    return DemoAccounts(analyst_token=tokens[DEMO_ANALYST], owner_token=tokens[DEMO_OWNER])


__all__ = ["DEMO_ANALYST", "DEMO_GRANT", "DEMO_OWNER", "DEMO_PURPOSE", "HOSPITALS", "DemoAccounts",
           "ensure_accounts", "write_config"]
