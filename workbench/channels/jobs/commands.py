"""``workbench node jobs list|show|approve|reject|release|withhold``: an owner's code-job decisions from a shell.

The commands work on the node's store directly (like ``workbench node reviews``); a running node picks up
a job approved here within a second of its next jobs request (its runner polls while it has work).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ...node.auth import Principal
from . import lifecycle
from .wire import CodeJobInfo

CLI_READER = Principal("owner-cli", "owner")


def _line(job: CodeJobInfo) -> str:
    flagged = sum(1 for r in job.results if r.flagged)
    return (f"{job.job_id:4d} {job.status:9s} {job.user:12s} {job.dataset:14s} {job.code_name} "
            f"code {job.code_hash[:12]} v{job.dataset_version[:8]}"
            + (f" outputs {len(job.results)} ({flagged} flagged)" if job.results else "")
            + (f" approved-with-job {job.approved_with_job}" if job.approved_with_job else ""))


def describe(job: CodeJobInfo) -> str:
    """What an owner reads before deciding: code (or its diff), parameters, outputs and their checks."""
    lines = [_line(job), f"purpose: {job.purpose!r}  note: {job.note!r}", f"parameters: {job.parameters}",
             f"declared outputs: {', '.join(job.outputs)}  dp_epsilon: {job.dp_epsilon:g} (spent {job.dp_spent:g})",
             f"hashes: code {job.code_hash}  approval {job.approval_hash}  job {job.job_hash}"]
    if job.error:
        lines.append(f"error: {job.error}")
    if job.diff:
        lines += [f"--- diff against approved job {job.previous_approved_job} ---", job.diff]
    else:
        lines += ["--- code ---", *lifecycle.render_code(job.kind, job.code or "")]
    for result in job.results:
        state = result.problem or result.status
        lines.append(f"--- output {result.name} ({result.media_type}, {result.size} bytes): {state}"
                     + (" FLAGGED" if result.flagged else "") + (f", review {result.review_id}" if result.review_id
                                                                 else ""))
        lines += [f"    [{'ok' if c.ok else '!!'}] {c.check}: {c.detail}" for c in result.checks]
    return "\n".join(lines)


def _show(service, job_id: int, save_to: str | None) -> str:
    """``jobs show``: the description, and with ``save_to`` every held file written there to look at."""
    text = describe(lifecycle.show(service, CLI_READER, job_id))
    if save_to:
        folder = Path(save_to)
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in lifecycle.held_files(service, CLI_READER, job_id).items():
            (folder / name).write_bytes(content)
            text += f"\nsaved {folder / name}"
    return text


def _outputs_command(group: click.Group, run: Callable, config_option, as_option, owner_of: Callable, name: str,
                     release: bool, help_text: str) -> None:
    """``jobs release`` / ``jobs withhold``: decide held outputs (default: every held one)."""
    @group.command(name, help=help_text)
    @click.argument("job_id", type=int)
    @click.option("--output", "outputs", multiple=True, help="An output to decide (default: every held one).")
    @as_option
    @config_option
    @click.option("--reason", default="")
    def decide_outputs(job_id: int, outputs: tuple[str, ...], as_owner: str, config_path: str, reason: str) -> None:
        run(config_path, lambda s: describe(lifecycle.decide_outputs(
            s, owner_of(s, as_owner), job_id, list(outputs) or None, release, reason)))


def commands(config_option, as_option, open_service: Callable, owner_of: Callable) -> click.Group:
    """The ``jobs`` command group, built with the CLI's shared options and helpers (``open_service``: a
    context manager giving the node's service for one command)."""

    @click.group("jobs")
    def group() -> None:
        """Code jobs: approve code by hash, then release (or withhold) its checked outputs."""

    def run(config_path: str, action: Callable) -> None:
        with open_service(config_path) as service:
            click.echo(action(service))

    @group.command("list")
    @config_option
    @click.option("--status", default=None, type=click.Choice(
        ["pending", "approved", "running", "held", "released", "withheld", "rejected", "failed"]))
    def list_jobs(config_path: str, status: str | None) -> None:
        """List code jobs, newest first."""
        run(config_path, lambda s: "\n".join(_line(j) for j in lifecycle.list_jobs(s, CLI_READER, status)))

    @group.command("show")
    @click.argument("job_id", type=int)
    @config_option
    @click.option("--save", "save_to", type=click.Path(file_okay=False), default=None,
                  help="Also write the held outputs and log into this folder, to look at them (images too).")
    def show(job_id: int, config_path: str, save_to: str | None) -> None:
        """The code (or its diff against the last approved version), parameters, outputs and checks."""
        run(config_path, lambda service: _show(service, job_id, save_to))

    @group.command("approve")
    @click.argument("job_id", type=int)
    @as_option
    @config_option
    @click.option("--reason", default="")
    def approve(job_id: int, as_owner: str, config_path: str, reason: str) -> None:
        """Approve exactly this code (its hash); the node runs it in the sandbox. Not your own."""
        run(config_path, lambda s: _line(lifecycle.decide(s, owner_of(s, as_owner), job_id, True, reason)))

    @group.command("reject")
    @click.argument("job_id", type=int)
    @as_option
    @config_option
    @click.option("--reason", required=True, help="Told to the analyst.")
    def reject(job_id: int, as_owner: str, config_path: str, reason: str) -> None:
        """Reject the code: it never runs."""
        run(config_path, lambda s: _line(lifecycle.decide(s, owner_of(s, as_owner), job_id, False, reason)))

    for name, release, help_text in (("release", True, "Let held outputs leave (after reading them and their checks)."),
                                     ("withhold", False, "Reject held outputs: they never leave.")):
        _outputs_command(group, run, config_option, as_option, owner_of, name, release, help_text)
    return group
