import { requestAPI } from '../request';
import { actionButton, decide, el, ICodeJob, IJobOutput } from './ownerKit';

const WAITING = ['pending', 'held'];

/** The submitted text of a notebook, parsed (as data; nothing runs). */
interface INotebookCell {
  cell_type?: string;
  source?: string | string[];
  metadata?: { tags?: string[] };
}

/**
 * The code as an owner reads it: a notebook's cells one after another (markdown
 * as plain text, never as HTML), each under its number, type and tags; a script
 * (or a notebook that does not parse) as its text.
 */
export function renderCode(kind: string, code: string): HTMLElement {
  let cells: INotebookCell[] | null = null;
  if (kind === 'ipynb') {
    try {
      const parsed = JSON.parse(code);
      cells = Array.isArray(parsed?.cells) ? parsed.cells : null;
    } catch {
      cells = null;
    }
  }
  if (cells === null) {
    return el('pre', { class: 'jp-WorkbenchPanel-code', 'data-code': '' }, code);
  }
  return el(
    'div',
    { class: 'jp-WorkbenchPanel-notebook', 'data-code': '' },
    ...cells.map((cell, i) => {
      const type = String(cell.cell_type ?? '?');
      const source = Array.isArray(cell.source) ? cell.source.join('') : String(cell.source ?? '');
      const tags = cell.metadata?.tags ?? [];
      return el(
        'div',
        { class: 'jp-WorkbenchPanel-cell', 'data-cell': String(i), 'data-cell-type': type },
        el('div', { class: 'jp-WorkbenchPanel-muted' }, `[${i}] ${type}${tags.length ? ` · ${tags.join(', ')}` : ''}`),
        el('pre', { class: type === 'code' ? 'jp-WorkbenchPanel-code' : 'jp-WorkbenchPanel-markdown' }, source)
      );
    })
  );
}

/**
 * Code jobs, owner view: each job's state; opened, its code (or the diff
 * against the version approved before), parameters and hashes, and each
 * output with its disclosure checks. Approve / reject a pending job;
 * release / withhold each held output.
 */
export class JobsSection {
  constructor(parent: HTMLElement, reload: () => Promise<void>) {
    this._reload = reload;
    this.node = el(
      'details',
      { class: 'jp-WorkbenchPanel-section', 'data-section': 'jobs', open: '' },
      el('summary', {}, 'Code jobs')
    );
    this._list = el('div', { class: 'jp-WorkbenchPanel-sectionBody' });
    this._detail = el('div', { class: 'jp-WorkbenchPanel-jobDetail' });
    this._status = el('div', { class: 'jp-WorkbenchPanel-muted', role: 'status' });
    this.node.append(this._list, this._detail, this._status);
    parent.appendChild(this.node);
  }

  render(nodeName: string, jobs: ICodeJob[]): void {
    this._nodeName = nodeName;
    const key = JSON.stringify([nodeName, jobs.map(j => [j.job_id, j.status, j.results.map(r => r.status)])]);
    if (key === this._key) {
      return;
    }
    this._key = key;
    if (jobs.length === 0) {
      this._list.replaceChildren(el('div', { class: 'jp-WorkbenchPanel-empty' }, 'No code jobs yet.'));
      return;
    }
    const ordered = [...jobs].sort(
      (a, b) => Number(WAITING.includes(b.status)) - Number(WAITING.includes(a.status))
    );
    const rows = ordered.map(job =>
      el(
        'tr',
        {
          class: 'jp-WorkbenchPanel-jobRow',
          'data-job': String(job.job_id),
          'data-status': job.status,
          tabindex: '0'
        },
        el('td', {}, String(job.job_id)),
        el('td', {}, job.code_name),
        el('td', {}, job.user),
        el('td', { class: 'jp-WorkbenchPanel-jobStatus' }, job.status)
      )
    );
    rows.forEach((row, i) => row.addEventListener('click', () => void this.open(ordered[i].job_id)));
    this._list.replaceChildren(
      el(
        'table',
        { class: 'jp-WorkbenchPanel-table' },
        el('thead', {}, el('tr', {}, ...['#', 'code', 'analyst', 'status'].map(x => el('th', {}, x)))),
        el('tbody', {}, ...rows)
      )
    );
    if (this._openJob !== null) {
      void this.open(this._openJob);
    }
  }

  /** Load one job (code, diff, checks) and show it below the list. */
  async open(jobId: number): Promise<void> {
    if (!this._nodeName) {
      return;
    }
    this._openJob = jobId;
    const job = await requestAPI<ICodeJob>(
      `owner/jobs/${jobId}?node=${encodeURIComponent(this._nodeName)}`
    );
    this._detail.replaceChildren(this._renderJob(job));
  }

  private _renderJob(job: ICodeJob): HTMLElement {
    const facts = [
      `${job.user} on ${job.dataset} (version ${job.dataset_version.slice(0, 12)})`,
      `purpose: ${job.purpose}${job.note ? ` — ${job.note}` : ''}`,
      `code hash ${job.code_hash.slice(0, 16)} · approval hash ${job.approval_hash.slice(0, 16)}`,
      job.approved_by ? `approved by ${job.approved_by}` + (job.approved_with_job ? ` (with job ${job.approved_with_job})` : '') : '',
      job.dp_epsilon > 0 ? `may spend ε=${job.dp_epsilon} through its DP channel` : '',
      job.error ? `error: ${job.error}` : ''
    ].filter(x => x);
    const code = job.diff
      ? [el('div', {}, `Diff against approved job ${job.previous_approved_job}:`), el('pre', { class: 'jp-WorkbenchPanel-code', 'data-diff': '' }, job.diff)]
      : [renderCode(job.kind, job.code ?? '')];
    return el(
      'div',
      { class: 'jp-WorkbenchPanel-job', 'data-job-detail': String(job.job_id) },
      el('h3', {}, `Job ${job.job_id}: ${job.code_name} — ${job.status}`),
      ...facts.map(f => el('div', { class: 'jp-WorkbenchPanel-muted' }, f)),
      el('div', {}, 'Parameters: ', el('code', {}, JSON.stringify(job.parameters))),
      el('div', {}, `Declared outputs: ${job.outputs.join(', ')}`),
      ...code,
      job.status === 'pending'
        ? el(
            'div',
            { class: 'jp-WorkbenchPanel-actions' },
            actionButton('Approve code', () => this._act(job.job_id, 'approve'), { 'data-action': 'approve' }),
            actionButton('Reject code', () => this._act(job.job_id, 'reject', undefined, true), { 'data-action': 'reject' })
          )
        : null,
      ...job.results.map(r => this._renderOutput(job, r))
    );
  }

  private _renderOutput(job: ICodeJob, r: IJobOutput): HTMLElement {
    const held = r.status === 'pending';
    return el(
      'div',
      { class: 'jp-WorkbenchPanel-output', 'data-output': r.name, 'data-flagged': String(r.flagged) },
      el(
        'div',
        {},
        el('strong', {}, r.name),
        ` ${r.media_type}, ${r.size} bytes — ${r.problem ?? r.status ?? ''}`,
        r.flagged ? el('span', { class: 'jp-WorkbenchPanel-flag' }, ' flagged') : null
      ),
      el(
        'ul',
        { class: 'jp-WorkbenchPanel-checks' },
        ...r.checks.map(c => el('li', { 'data-ok': String(c.ok) }, `${c.ok ? '✓' : '⚠'} ${c.check}: ${c.detail}`))
      ),
      r.preview ? this._preview(r.preview) : null,
      held
        ? el(
            'div',
            { class: 'jp-WorkbenchPanel-actions' },
            actionButton('Release', () => this._act(job.job_id, 'release', [r.name]), { 'data-action': 'release' }),
            actionButton('Withhold', () => this._act(job.job_id, 'withhold', [r.name], true), { 'data-action': 'withhold' })
          )
        : null
    );
  }

  /** Text as text; a PNG/JPEG (a data: URL from the node) as an image the owner looks at. */
  private _preview(preview: string): HTMLElement {
    if (/^data:image\/(png|jpeg);base64,/.test(preview)) {
      return el('img', { class: 'jp-WorkbenchPanel-preview', src: preview, alt: 'held image output' });
    }
    return el('pre', { class: 'jp-WorkbenchPanel-code' }, preview.slice(0, 1500));
  }

  private async _act(jobId: number, action: string, outputs?: string[], askReason = false): Promise<void> {
    if (!this._nodeName) {
      return;
    }
    const reason = askReason ? window.prompt('Reason (the analyst will read it):', '') : '';
    if (reason === null) {
      return;
    }
    try {
      await decide(this._nodeName, 'jobs', jobId, action, { reason, outputs: outputs ?? null });
      this._status.textContent = `job ${jobId}: ${action} done`;
    } catch (error) {
      this._status.textContent = `job ${jobId}: ${(error as Error).message}`;
    }
    this._key = '';
    await this._reload();
    await this.open(jobId);
  }

  readonly node: HTMLElement;
  private _list: HTMLElement;
  private _detail: HTMLElement;
  private _status: HTMLElement;
  private _reload: () => Promise<void>;
  private _nodeName: string | null = null;
  private _openJob: number | null = null;
  private _key = '';
}
