import { requestAPI, WorkbenchAPIError } from '../request';
import { JobsSection } from './jobs';
import { el, IOwnerQueue } from './ownerKit';
import { ReviewsSection } from './reviews';

/**
 * The owner's view: pending access requests and review items, and code jobs.
 * Shown when the selected node's connection is an owner's or an auditor's.
 */
export class OwnerView {
  constructor(parent: HTMLElement) {
    this.node = el('div', { class: 'jp-WorkbenchPanel-owner' });
    this._error = el('div', { class: 'jp-WorkbenchPanel-ownerError', role: 'alert' });
    this.node.appendChild(this._error);
    this._reviews = new ReviewsSection(this.node, () => this.reload());
    this._jobs = new JobsSection(this.node, () => this.reload());
    this.node.hidden = true;
    parent.appendChild(this.node);
  }

  /** Called on every panel render: shows the view for owners, reloads at most every few seconds. */
  show(nodeName: string | null, role: string | null | undefined): void {
    const visible = !!nodeName && (role === 'owner' || role === 'auditor');
    this.node.hidden = !visible;
    if (!visible || !nodeName) {
      return;
    }
    const changed = nodeName !== this._nodeName;
    this._nodeName = nodeName;
    if (changed || Date.now() - this._loadedAt > RELOAD_MS) {
      void this.reload();
    }
  }

  async reload(): Promise<void> {
    const name = this._nodeName;
    if (!name) {
      return;
    }
    this._loadedAt = Date.now();
    try {
      const queue = await requestAPI<IOwnerQueue>(
        `owner?node=${encodeURIComponent(name)}`
      );
      this._error.replaceChildren();
      this._reviews.render(name, queue);
      this._jobs.render(name, queue.jobs);
    } catch (error) {
      const message =
        error instanceof WorkbenchAPIError ? error.message : String(error);
      this._error.replaceChildren(el('span', {}, message));
    }
  }

  readonly node: HTMLElement;
  private _error: HTMLElement;
  private _reviews: ReviewsSection;
  private _jobs: JobsSection;
  private _nodeName: string | null = null;
  private _loadedAt = 0;
}

const RELOAD_MS = 5000;
