import {
  actionButton,
  decide,
  el,
  IAccessRequest,
  IOwnerQueue,
  IReviewItem
} from './ownerKit';

/**
 * The owner's daily decisions: pending access requests (approve / deny)
 * and pending review items of other channels (approve / reject).
 */
export class ReviewsSection {
  constructor(parent: HTMLElement, reload: () => Promise<void>) {
    this._reload = reload;
    this.node = el(
      'details',
      {
        class: 'jp-WorkbenchPanel-section',
        'data-section': 'decisions',
        open: ''
      },
      el('summary', {}, 'Decisions')
    );
    this._body = el('div', { class: 'jp-WorkbenchPanel-sectionBody' });
    this._status = el('div', { class: 'jp-WorkbenchPanel-muted', role: 'status' });
    this.node.append(this._body, this._status);
    parent.appendChild(this.node);
  }

  render(nodeName: string, queue: IOwnerQueue): void {
    const key = JSON.stringify([nodeName, queue.requests, queue.reviews]);
    if (key === this._key) {
      return;
    }
    this._key = key;
    const parts: HTMLElement[] = [];
    if (queue.requests.length === 0 && queue.reviews.length === 0) {
      parts.push(el('div', { class: 'jp-WorkbenchPanel-empty' }, 'Nothing waits for a decision.'));
    }
    for (const r of queue.requests) {
      parts.push(this._request(nodeName, r));
    }
    for (const r of queue.reviews) {
      parts.push(this._review(nodeName, r));
    }
    this._body.replaceChildren(...parts);
  }

  private _request(nodeName: string, r: IAccessRequest): HTMLElement {
    return el(
      'div',
      { class: 'jp-WorkbenchPanel-decision', 'data-request': String(r.request_id) },
      el(
        'div',
        {},
        el('strong', {}, `Request ${r.request_id}`),
        ` ${r.user} asks for ε=${r.epsilon} δ=${r.delta} on ${r.dataset}`
      ),
      el('div', { class: 'jp-WorkbenchPanel-muted' }, `purpose: ${r.purpose}${r.note ? ` — ${r.note}` : ''}`),
      el(
        'div',
        { class: 'jp-WorkbenchPanel-actions' },
        actionButton('Approve', () => this._act(nodeName, 'requests', r.request_id, 'approve')),
        actionButton('Deny', () => this._act(nodeName, 'requests', r.request_id, 'deny', true))
      )
    );
  }

  private _review(nodeName: string, r: IReviewItem): HTMLElement {
    const leaves = r.summary ? String(r.summary['what_leaves'] ?? '') : '';
    return el(
      'div',
      { class: 'jp-WorkbenchPanel-decision', 'data-review': String(r.review_id) },
      el('div', {}, el('strong', {}, `Review ${r.review_id}`), ` ${r.channel}/${r.kind} for ${r.user} on ${r.dataset}`),
      leaves ? el('div', { class: 'jp-WorkbenchPanel-muted' }, `would release: ${leaves}`) : null,
      r.summary
        ? el('pre', { class: 'jp-WorkbenchPanel-code' }, JSON.stringify(r.summary, null, 1).slice(0, 2000))
        : null,
      el(
        'div',
        { class: 'jp-WorkbenchPanel-actions' },
        actionButton('Approve', () => this._act(nodeName, 'reviews', r.review_id, 'approve')),
        actionButton('Reject', () => this._act(nodeName, 'reviews', r.review_id, 'reject', true))
      )
    );
  }

  private async _act(
    nodeName: string,
    kind: 'requests' | 'reviews',
    id: number,
    action: string,
    askReason = false
  ): Promise<void> {
    const reason = askReason ? window.prompt('Reason (the analyst will read it):', '') : '';
    if (reason === null) {
      return;
    }
    try {
      await decide(nodeName, kind, id, action, { reason });
      this._status.textContent = `${kind.slice(0, -1)} ${id}: ${action} done`;
    } catch (error) {
      this._status.textContent = `${kind.slice(0, -1)} ${id}: ${(error as Error).message}`;
    }
    this._key = '';
    await this._reload();
  }

  readonly node: HTMLElement;
  private _body: HTMLElement;
  private _status: HTMLElement;
  private _reload: () => Promise<void>;
  private _key = '';
}
