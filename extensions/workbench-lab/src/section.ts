import { Child, h } from './dom';
import { ISource, WorkbenchModel } from './model';

/** What a section sees when it renders. */
export interface ISectionContext {
  model: WorkbenchModel;
  /** The selected node is down or refused us: data may be old (the banner says why). */
  stale: boolean;
  /** Ask for a render now (after a change of the section's own state, e.g. its page). */
  rerender: () => void;
}

/**
 * One part of the Workbench sidebar, in its own file under `src/sections/`.
 *
 * To add a section: write a class implementing this interface, then add it
 * to the `SECTIONS` list in `panel.ts`. If it declares a `source`, the model
 * fetches `<base_url>/workbench/<endPoint>?node=NAME` on every poll and the
 * section reads the answer's `field` with `model.section(name)`.
 */
export interface IPanelSection {
  /** Stable name (`data-section` attribute, model key). */
  readonly name: string;
  /** The section's heading. */
  readonly title: string;
  /** The server-extension endpoint whose answer this section shows, if any. */
  readonly source?: ISource;
  /** Everything the section's DOM depends on: it is rebuilt only when this changes. */
  key(ctx: ISectionContext): unknown;
  /** The section's body. */
  render(ctx: ISectionContext): Child[];
}

/** A class that makes a section (the entries of `SECTIONS`). */
export type SectionClass = new () => IPanelSection;

/** A collapsible `<details>` whose body is rebuilt only when its key changes. */
export class SectionView {
  constructor(parent: HTMLElement, readonly section: IPanelSection) {
    this.node = h(
      'details',
      { class: 'jp-WorkbenchPanel-section', 'data-section': section.name, open: '' },
      h('summary', {}, section.title)
    ) as HTMLDetailsElement;
    this.body = h('div', { class: 'jp-WorkbenchPanel-sectionBody' });
    this.node.appendChild(this.body);
    parent.appendChild(this.node);
  }

  /** Rebuild the body if the section's key differs from the last render. */
  update(ctx: ISectionContext): void {
    const text = JSON.stringify(this.section.key(ctx));
    if (text === this._key) {
      return;
    }
    this._key = text;
    this.body.replaceChildren(
      ...(this.section.render(ctx).filter(x => x) as (Node | string)[])
    );
  }

  readonly node: HTMLDetailsElement;
  readonly body: HTMLElement;
  private _key = '';
}
