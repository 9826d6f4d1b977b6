"""The owner's administrative actions: users, tokens and grants.

Used by the CLI (directly on the node's state) and by the owner-only API.
Every action is written to the audit log in the same transaction.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from ..errors import InvalidQuery, NotFound
from ..protocol import GrantInfo
from . import audit
from .agreement import AgreementConfig, check_grant, recorded_claims
from .auth import ROLES, TokenAuthority
from .ledger import left
from .store import Grant, RetiredUser, Store, User, first_token_version


def add_user(store: Store, authority: TokenAuthority, name: str, role: str, actor: str = "owner-cli") -> str:
    """Create a user and return their first token (shown once, never stored)."""
    if role not in ROLES:
        raise InvalidQuery(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.", code="invalid_query")
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidQuery("A user name is 1-64 letters, digits, '-', '_' or '.'.", code="invalid_query")
    with store.transaction() as session:
        if session.execute(select(User).where(User.name == name)).scalar_one_or_none() is not None:
            raise InvalidQuery(f"User {name!r} already exists; use 'user token' to issue a new token.",
                               code="invalid_query")
        user = User(name=name, role=role, token_version=first_token_version(session, name))
        session.add(user)
        session.flush()
        audit.append(session, actor, "user_add", None, user=name, role=role)
        return authority.issue(user)


def issue_token(store: Store, authority: TokenAuthority, name: str, revoke_old: bool = False,
                actor: str = "owner-cli", ttl_s: float | None = None, dpop_jkt: str | None = None) -> str:
    """A new token for ``name``; with ``dpop_jkt`` (the analyst's ``workbench dpop-key`` thumbprint) DPoP-bound."""
    if dpop_jkt is not None and not re.fullmatch(r"[A-Za-z0-9_-]{43}", dpop_jkt):
        raise InvalidQuery("A DPoP key thumbprint is 43 base64url characters (see 'workbench dpop-key').",
                           code="invalid_query")
    with store.transaction() as session:
        user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"No user {name!r}.", code="not_found")
        if revoke_old:
            user.token_version += 1
        audit.append(session, actor, "token_issue", None, user=name, revoked_old=revoke_old,
                     **({"dpop_jkt": dpop_jkt} if dpop_jkt else {}))
        return authority.issue(user, ttl_s=ttl_s, jkt=dpop_jkt)


def _user(session, name: str) -> User:
    user = session.execute(select(User).where(User.name == name).with_for_update()).scalar_one_or_none()
    if user is None:
        raise NotFound(f"No user {name!r}.", code="not_found")
    return user


def _keep_an_owner(session, user: User) -> None:
    """Refuse to disable, delete or demote the last enabled owner (nobody could administer the node)."""
    owners = session.execute(select(User).where(User.role == "owner", User.disabled.is_(False))).scalars().all()
    if user.role == "owner" and not user.disabled and len(owners) <= 1:
        raise InvalidQuery(f"{user.name!r} is the node's last enabled owner; add another owner first.",
                           code="invalid_query")


def set_disabled(store: Store, name: str, disabled: bool, actor: str = "owner-cli") -> None:
    """Disable a user (every token stops working at once) or enable them again (their tokens work again)."""
    with store.transaction() as session:
        user = _user(session, name)
        if disabled:
            _keep_an_owner(session, user)
        user.disabled = disabled
        audit.append(session, actor, "user_disable" if disabled else "user_enable", None, user=name)


def set_role(store: Store, authority: TokenAuthority, name: str, role: str, actor: str = "owner-cli") -> str:
    """Change a user's role; every earlier token is revoked (it named the old role). Returns a new token."""
    if role not in ROLES:
        raise InvalidQuery(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.", code="invalid_query")
    with store.transaction() as session:
        user = _user(session, name)
        if role != "owner":
            _keep_an_owner(session, user)
        old, user.role = user.role, role
        user.token_version += 1
        audit.append(session, actor, "user_role", None, user=name, old_role=old, role=role, revoked_old=True)
        return authority.issue(user)


def delete_user(store: Store, name: str, actor: str = "owner-cli") -> int:
    """Delete a user: their tokens stop working, their live grants are revoked (the ledger keeps what they
    spent), and a user later created under the name starts at a higher token version. Returns grants revoked."""
    with store.transaction() as session:
        user = _user(session, name)
        _keep_an_owner(session, user)
        retired = session.get(RetiredUser, name)
        if retired is None:
            session.add(RetiredUser(name=name, last_token_version=user.token_version))
        else:
            retired.last_token_version = max(retired.last_token_version, user.token_version)
        grants = session.execute(select(Grant).where(Grant.user_name == name, Grant.revoked.is_(False))
                                 .with_for_update()).scalars().all()
        for grant in grants:
            grant.revoked = True
        session.delete(user)
        audit.append(session, actor, "user_delete", None, user=name, role=user.role,
                     grants_revoked=[g.id for g in grants])
        return len(grants)


def list_users(store: Store) -> list[dict]:
    with store.transaction() as session:
        return [{"name": u.name, "role": u.role, "disabled": u.disabled, "created_at": u.created_at}
                for u in session.execute(select(User).order_by(User.id)).scalars()]


def add_grant(store: Store, user: str, dataset: str, purpose: str, epsilon: float, delta: float = 0.0,
              expires_days: float | None = None, actor: str = "owner-cli", known_datasets: set[str] | None = None,
              agreement: AgreementConfig | None = None) -> GrantInfo:
    """Grant ``user`` a budget on ``dataset`` for ``purpose``, within the dataset's sharing ``agreement``."""
    if not (0 < epsilon <= 1000) or not (0 <= delta < 1):
        raise InvalidQuery("A grant needs 0 < epsilon <= 1000 and 0 <= delta < 1.", code="bad_epsilon")
    if not purpose.strip():
        raise InvalidQuery("A grant needs a purpose.", code="invalid_query")
    if known_datasets is not None and dataset not in known_datasets:
        raise NotFound(f"Unknown dataset '{dataset}'.", code="unknown_dataset")
    expires = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
    with store.transaction() as session:
        grantee = session.execute(select(User).where(User.name == user)).scalar_one_or_none()
        if grantee is None:
            raise NotFound(f"No user {user!r}.", code="not_found")
        if grantee.role != "owner":
            expires = check_grant(agreement, purpose=purpose, epsilon=epsilon, delta=delta,
                                  claims=recorded_claims(session, user), expires_at=expires)
        grant = Grant(user_name=user, dataset=dataset, purpose=purpose.strip(), epsilon=epsilon, delta=delta,
                      expires_at=expires, created_by=actor)
        session.add(grant)
        session.flush()
        audit.append(session, actor, "grant_add", dataset, grant_id=grant.id, user=user, purpose=grant.purpose,
                     epsilon=epsilon, delta=delta, expires_at=expires)
        return grant_info(grant)


def revoke_grant(store: Store, grant_id: int, actor: str = "owner-cli") -> None:
    with store.transaction() as session:
        grant = session.get(Grant, grant_id, with_for_update=True)
        if grant is None:
            raise NotFound(f"No grant {grant_id}.", code="not_found")
        grant.revoked = True
        audit.append(session, actor, "grant_revoke", grant.dataset, grant_id=grant_id, user=grant.user_name)


def grant_info(grant: Grant) -> GrantInfo:
    balance = left(grant)
    return GrantInfo(
        grant_id=grant.id, user=grant.user_name, dataset=grant.dataset, purpose=grant.purpose,
        epsilon=grant.epsilon, delta=grant.delta, epsilon_spent=grant.epsilon_spent, delta_spent=grant.delta_spent,
        epsilon_left=balance.epsilon, delta_left=balance.delta,
        expires_at=grant.expires_at, revoked=grant.revoked)


def list_grants(store: Store, user: str | None = None, dataset: str | None = None) -> list[GrantInfo]:
    with store.transaction() as session:
        stmt = select(Grant).order_by(Grant.id)
        if user is not None:
            stmt = stmt.where(Grant.user_name == user)
        if dataset is not None:
            stmt = stmt.where(Grant.dataset == dataset)
        return [grant_info(g) for g in session.execute(stmt).scalars()]
