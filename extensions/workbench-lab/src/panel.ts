import { LabIcon, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { errorBox, h } from './dom';
import { WorkbenchModel } from './model';
import { ISectionContext, SectionClass, SectionView } from './section';
import { BudgetsSection } from './sections/budgets';
import { CatalogSection } from './sections/catalog';
import { HistorySection } from './sections/history';
import { NodesSection } from './sections/nodes';
import { OwnerView } from './sections/owner';
import { RequestsSection } from './sections/requests';

/**
 * The panel's sections, top to bottom. Adding one is an import above and a
 * line here (see `IPanelSection` in `section.ts`).
 */
export const SECTIONS: SectionClass[] = [
  NodesSection,
  CatalogSection,
  BudgetsSection,
  RequestsSection,
  HistorySection
];

const WORKBENCH_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4h18v3H3zM5 8h2v12H5zM17 8h2v12h-2zM8 12h8v2H8z"/>
  </g>
</svg>`;

/** The sidebar icon. */
export const workbenchIcon = new LabIcon({
  name: 'workbench-lab:workbench',
  svgstr: WORKBENCH_SVG
});

/**
 * The Workbench sidebar: a header, a banner for node-wide errors, and the
 * `SECTIONS`, each rebuilt only when its own data changes.
 */
export class WorkbenchPanel extends Widget {
  constructor(model: WorkbenchModel, sections: SectionClass[] = SECTIONS) {
    super();
    this.model = model;
    this.id = 'workbench-lab-panel';
    this.addClass('jp-WorkbenchPanel');
    this.title.icon = workbenchIcon;
    this.title.caption = 'Workbench';

    this._status = h('span', { class: 'jp-WorkbenchPanel-status' });
    this.node.appendChild(
      h('header', { class: 'jp-WorkbenchPanel-header' }, h('h2', {}, 'Workbench'), this._status, this._refreshButton())
    );
    this._banner = h('div', { class: 'jp-WorkbenchPanel-banner' });
    this.node.appendChild(this._banner);

    const content = h('div', { class: 'jp-WorkbenchPanel-content' });
    this.node.appendChild(content);
    this._views = sections.map(Section => {
      const section = new Section();
      if (section.source) {
        model.addSource(section.name, section.source);
      }
      return new SectionView(content, section);
    });
    this._owner = new OwnerView(content); // owner view: src/sections/{owner,reviews,jobs}.ts

    this.model.changed.connect(this._render, this);
    this._render();
  }

  readonly model: WorkbenchModel;

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    this.model.active = true;
  }

  protected onAfterHide(msg: Message): void {
    this.model.active = false;
  }

  private _refreshButton(): HTMLElement {
    const button = h('button', {
      class: 'jp-WorkbenchPanel-refresh jp-mod-styled',
      title: 'Refresh now',
      'aria-label': 'Refresh'
    });
    button.appendChild(
      refreshIcon.element({ tag: 'span', elementPosition: 'center', height: '16px', width: '16px' })
    );
    button.addEventListener('click', () => void this.model.refresh());
    return button;
  }

  private _render(): void {
    const m = this.model;
    this.toggleClass('jp-mod-busy', m.busy);
    this._status.textContent = m.lastUpdated ? `Updated ${m.lastUpdated.toLocaleTimeString()}` : 'Loading…';

    // Errors that concern the whole panel (no config, Jupyter unreachable, node down).
    const top = m.nodes.error;
    const selected = (m.nodes.data ?? []).find(n => n.name === m.selectedNode);
    const stale = !!(selected && selected.status !== 'up');
    const bannerError = top ?? (stale ? selected!.error : null);
    this._banner.replaceChildren(
      ...(bannerError ? [errorBox(bannerError, top ? !!m.nodes.data : m.hasData)] : [])
    );

    const ctx: ISectionContext = { model: m, stale, rerender: () => this._render() };
    for (const view of this._views) {
      view.update(ctx);
    }
    this._owner.show(m.selectedNode, selected?.status === 'up' ? selected.role : null);
  }

  private _status: HTMLElement;
  private _banner: HTMLElement;
  private _views: SectionView[];
  private _owner: OwnerView;
}
