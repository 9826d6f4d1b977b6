import { LabIcon, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { renderAgreement } from './sections/agreement';

import {
  IAccessRequest,
  IDatasetInfo,
  IDatasetSummary,
  IErrorInfo,
  IGrant,
  INodeStatus,
  IRelease,
  ISection,
  WorkbenchModel
} from './model';

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

/** Headlines for the error codes a user can act on. */
const ERROR_TITLES: Record<string, string> = {
  node_unreachable: 'Node unreachable',
  protocol_unsupported: 'Incompatible node',
  not_authenticated: 'Not authenticated',
  not_authorized: 'Not allowed',
  no_grant: 'No grant',
  grant_expired: 'Grant expired',
  budget_exceeded: 'Budget exhausted',
  dataset_budget_exceeded: 'Dataset budget exhausted',
  unknown_dataset: 'Unknown dataset',
  not_found: 'Not found',
  not_supported: 'Not supported by this node',
  computation_failed: 'Node error',
  internal_error: 'Internal error',
  unknown_node: 'Unknown node',
  no_config: 'No Workbench configuration',
  config_error: 'Configuration problem',
  jupyter_unreachable: 'Jupyter server unreachable',
  extension_missing: 'Server extension missing'
};

type Child = Node | string | null | undefined | false;

/** Build an element; text is always set as text, never parsed as HTML. */
function h(
  tag: string,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElement {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      el.className = value;
    } else {
      el.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.appendChild(
      typeof child === 'string' ? document.createTextNode(child) : child
    );
  }
  return el;
}

/** Format an epsilon/delta amount compactly (0.35, 1e-6, 12.5). */
export function formatAmount(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  const x = Number(value);
  if (!Number.isFinite(x)) {
    return String(value);
  }
  if (x !== 0 && Math.abs(x) < 1e-3) {
    return x.toExponential(1);
  }
  return String(Number(x.toFixed(3)));
}

function formatBounds(value: unknown): string {
  if (Array.isArray(value) && value.length === 2) {
    return `${formatAmount(value[0])} – ${formatAmount(value[1])}`;
  }
  return formatValue(value);
}

function formatPrivacyUnit(value: unknown): string {
  if (value === null || value === undefined) {
    return 'one row';
  }
  if (typeof value === 'string') {
    return value;
  }
  const unit = value as { id_column?: string | null; max_contributions?: number };
  const max = unit.max_contributions ?? 1;
  if (!unit.id_column) {
    return max > 1 ? `up to ${max} rows` : 'one row';
  }
  return `one ${unit.id_column} (up to ${max} row${max === 1 ? '' : 's'})`;
}

function formatTime(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  const date = new Date(String(value));
  if (Number.isNaN(date.getTime())) {
    return String(value);
  }
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString()
    : date.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

function formatValue(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  if (typeof value === 'object') {
    return JSON.stringify(value);
  }
  return String(value);
}

function errorBox(error: IErrorInfo, stale = false): HTMLElement {
  const title = ERROR_TITLES[error.code] ?? 'Error';
  return h(
    'div',
    { class: 'jp-WorkbenchPanel-error', role: 'alert', 'data-code': error.code },
    h('strong', {}, title),
    h('span', {}, error.message),
    stale
      ? h('span', { class: 'jp-WorkbenchPanel-muted' }, 'Showing the last known state.')
      : null
  );
}

function notice(text: string): HTMLElement {
  return h('div', { class: 'jp-WorkbenchPanel-empty' }, text);
}

function table(headers: string[], rows: HTMLElement[]): HTMLElement {
  return h(
    'table',
    { class: 'jp-WorkbenchPanel-table' },
    h('thead', {}, h('tr', {}, ...headers.map(x => h('th', {}, x)))),
    h('tbody', {}, ...rows)
  );
}

/** A collapsible section whose body is rebuilt only when its data changes. */
class Section {
  constructor(parent: HTMLElement, name: string, title: string) {
    this.node = h(
      'details',
      { class: 'jp-WorkbenchPanel-section', 'data-section': name, open: '' },
      h('summary', {}, title)
    ) as HTMLDetailsElement;
    this.body = h('div', { class: 'jp-WorkbenchPanel-sectionBody' });
    this.node.appendChild(this.body);
    parent.appendChild(this.node);
  }

  /** Replace the body if `key` differs from the last render. */
  update(key: unknown, render: () => Child[]): void {
    const text = JSON.stringify(key);
    if (text === this._key) {
      return;
    }
    this._key = text;
    this.body.replaceChildren(
      ...(render().filter(x => x) as (Node | string)[])
    );
  }

  readonly node: HTMLDetailsElement;
  readonly body: HTMLElement;
  private _key = '';
}

/**
 * The Workbench sidebar: nodes, catalogue, budgets, requests, releases.
 */
export class WorkbenchPanel extends Widget {
  constructor(model: WorkbenchModel) {
    super();
    this.model = model;
    this.id = 'workbench-lab-panel';
    this.addClass('jp-WorkbenchPanel');
    this.title.icon = workbenchIcon;
    this.title.caption = 'Workbench';

    const refreshButton = h('button', {
      class: 'jp-WorkbenchPanel-refresh jp-mod-styled',
      title: 'Refresh now',
      'aria-label': 'Refresh'
    });
    refreshButton.appendChild(
      refreshIcon.element({
        tag: 'span',
        elementPosition: 'center',
        height: '16px',
        width: '16px'
      })
    );
    refreshButton.addEventListener('click', () => void this.model.refresh());
    this._status = h('span', { class: 'jp-WorkbenchPanel-status' });
    this.node.appendChild(
      h(
        'header',
        { class: 'jp-WorkbenchPanel-header' },
        h('h2', {}, 'Workbench'),
        this._status,
        refreshButton
      )
    );
    this._banner = h('div', { class: 'jp-WorkbenchPanel-banner' });
    this.node.appendChild(this._banner);

    const content = h('div', { class: 'jp-WorkbenchPanel-content' });
    this.node.appendChild(content);
    this._nodes = new Section(content, 'nodes', 'Nodes');
    this._catalog = new Section(content, 'catalog', 'Catalogue');
    this._budgets = new Section(content, 'budgets', 'Budgets');
    this._requests = new Section(content, 'requests', 'Access requests');
    this._history = new Section(content, 'history', 'Release history');

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

  private _render(): void {
    const m = this.model;
    this.toggleClass('jp-mod-busy', m.busy);
    this._status.textContent = m.lastUpdated
      ? `Updated ${m.lastUpdated.toLocaleTimeString()}`
      : 'Loading…';

    // Errors that concern the whole panel (no config, Jupyter unreachable).
    const top = m.nodes.error;
    const nodes = m.nodes.data ?? [];
    const selected = nodes.find(n => n.name === m.selectedNode);
    const bannerError =
      top ?? (selected && selected.status !== 'up' ? selected.error : null);
    const haveData = [m.catalog, m.grants, m.history].some(x => x.data !== null);
    this._banner.replaceChildren(
      ...(bannerError ? [errorBox(bannerError, top ? !!m.nodes.data : haveData)] : [])
    );

    this._nodes.update([m.nodes, m.selectedNode], () => this._renderNodes());
    const showStale = !!(selected && selected.status !== 'up');
    this._catalog.update(
      [m.catalog, m.selectedDataset, m.schema, showStale],
      () => this._renderCatalog(showStale)
    );
    this._budgets.update([m.grants, showStale], () =>
      this._renderGrants(m.grants, showStale)
    );
    this._requests.update([m.requests, showStale], () =>
      this._renderRequests(m.requests, showStale)
    );
    this._history.update([m.history, showStale], () =>
      this._renderHistory(m.history, showStale)
    );
  }

  /** What an empty section says while the node is down (the banner says why). */
  private _staleNotice(section: ISection<unknown>, stale: boolean): HTMLElement | null {
    return stale && section.data === null
      ? notice('Not available (see the message above).')
      : null;
  }

  /** A section's error: shown inline unless the banner already says it. */
  private _sectionError(
    section: ISection<unknown>,
    stale: boolean
  ): HTMLElement | null {
    if (!section.error || stale) {
      return null;
    }
    return errorBox(section.error);
  }

  private _renderNodes(): Child[] {
    const m = this.model;
    const nodes = m.nodes.data;
    if (nodes === null) {
      return m.nodes.error ? [] : [notice('Loading…')];
    }
    if (nodes.length === 0) {
      return [
        notice(
          'No node configured. Add [nodes.NAME] to ~/.config/workbench/config.toml ' +
            '(or $WORKBENCH_CONFIG), or set WORKBENCH_URL and WORKBENCH_TOKEN.'
        )
      ];
    }
    return [
      h(
        'ul',
        { class: 'jp-WorkbenchPanel-nodes' },
        ...nodes.map(n => this._renderNode(n, n.name === m.selectedNode))
      )
    ];
  }

  private _renderNode(n: INodeStatus, selected: boolean): HTMLElement {
    const item = h(
      'li',
      {
        class:
          'jp-WorkbenchPanel-node' + (selected ? ' jp-mod-selected' : ''),
        'data-node': n.name,
        'data-status': n.status,
        title: n.url,
        tabindex: '0'
      },
      h('span', {
        class: `jp-WorkbenchPanel-dot jp-mod-${n.status}`,
        'aria-label': n.status
      }),
      h('span', { class: 'jp-WorkbenchPanel-nodeName' }, n.name),
      h(
        'span',
        { class: 'jp-WorkbenchPanel-muted' },
        n.status === 'up'
          ? [
              n.version ? `v${n.version}` : null,
              n.user ? `${n.user}${n.role ? ` (${n.role})` : ''}` : null
            ]
              .filter(x => x)
              .join(' · ')
          : n.status === 'down'
            ? 'down'
            : (ERROR_TITLES[n.error?.code ?? ''] ?? 'error').toLowerCase()
      )
    );
    const select = () => {
      this.model.selectedNode = n.name;
    };
    item.addEventListener('click', select);
    item.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        select();
      }
    });
    return item;
  }

  private _renderCatalog(stale: boolean): Child[] {
    const m = this.model;
    const section = m.catalog;
    const out: Child[] = [
      this._sectionError(section, stale),
      this._staleNotice(section, stale)
    ];
    if (section.data === null) {
      if (!section.error && !stale) {
        out.push(notice(m.selectedNode ? 'Loading…' : 'No node selected.'));
      }
      return out;
    }
    if (section.data.length === 0) {
      out.push(notice('This node publishes no dataset you can see.'));
      return out;
    }
    const rows: HTMLElement[] = [];
    for (const d of section.data) {
      const isOpen = d.name === m.selectedDataset;
      const row = h(
        'tr',
        {
          class:
            'jp-WorkbenchPanel-dataset' + (isOpen ? ' jp-mod-selected' : ''),
          'data-dataset': d.name,
          title: d.description ? String(d.description) : d.name,
          tabindex: '0'
        },
        h(
          'td',
          { class: 'jp-WorkbenchPanel-datasetName' },
          h('span', { class: 'jp-WorkbenchPanel-caret' }, isOpen ? '▾' : '▸'),
          d.name
        ),
        h('td', {}, h('span', { class: 'jp-WorkbenchPanel-tier' }, formatValue(d.tier))),
        h('td', {}, formatValue(d.licence))
      );
      const toggle = () => {
        m.selectedDataset = isOpen ? null : d.name;
      };
      row.addEventListener('click', toggle);
      row.addEventListener('keydown', event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          toggle();
        }
      });
      rows.push(row);
      if (isOpen) {
        rows.push(
          h(
            'tr',
            { class: 'jp-WorkbenchPanel-schemaRow' },
            h('td', { colspan: '3' }, this._renderSchema(d))
          )
        );
      }
    }
    out.push(table(['Dataset', 'Tier', 'Licence'], rows));
    return out;
  }

  private _renderSchema(summary: IDatasetSummary): HTMLElement {
    const schema = this.model.schema;
    const box = h('div', {
      class: 'jp-WorkbenchPanel-schema',
      'data-dataset': summary.name
    });
    if (schema.error) {
      box.appendChild(errorBox(schema.error));
      return box;
    }
    const info: IDatasetInfo | null = schema.data;
    if (info === null) {
      box.appendChild(notice('Loading schema…'));
      return box;
    }
    if (info.description) {
      box.appendChild(h('p', {}, String(info.description)));
    }
    const agreement = renderAgreement(summary.agreement);
    if (agreement !== null) {
      box.appendChild(agreement);
    }
    const facts: HTMLElement[] = [];
    facts.push(h('span', {}, `Privacy unit: ${formatPrivacyUnit(info.privacy_unit)}`));
    const version = info.version ?? summary.version;
    if (version !== undefined && version !== null && version !== '') {
      const text = String(version);
      facts.push(
        h(
          'span',
          { title: text },
          `Version: ${text.length > 22 ? text.slice(0, 20) + '…' : text}`
        )
      );
    }
    box.appendChild(h('p', { class: 'jp-WorkbenchPanel-facts jp-WorkbenchPanel-muted' }, ...facts));
    const rows = (info.columns ?? []).map(c => {
      const range =
        c.categories && c.categories.length
          ? c.categories.map(x => String(x)).join(', ')
          : c.bounds !== null && c.bounds !== undefined
            ? formatBounds(c.bounds)
            : '';
      return h(
        'tr',
        { 'data-column': c.name },
        h(
          'td',
          {},
          h('span', { class: 'jp-WorkbenchPanel-colName' }, c.name),
          c.description
            ? h('div', { class: 'jp-WorkbenchPanel-colDesc' }, String(c.description))
            : null
        ),
        h(
          'td',
          {},
          h('span', { class: 'jp-WorkbenchPanel-colType' }, formatValue(c.type)),
          range ? h('div', { class: 'jp-WorkbenchPanel-colRange' }, range) : null
        )
      );
    });
    box.appendChild(table(['Column', 'Type and range'], rows));
    return box;
  }

  private _renderGrants(section: ISection<IGrant[]>, stale: boolean): Child[] {
    const out: Child[] = [
      this._sectionError(section, stale),
      this._staleNotice(section, stale)
    ];
    if (section.data === null) {
      if (!section.error && !stale) {
        out.push(notice('Loading…'));
      }
      return out;
    }
    if (section.data.length === 0) {
      out.push(notice('You hold no grant on this node.'));
      return out;
    }
    for (const g of section.data) {
      out.push(this._renderGauge(g));
    }
    return out;
  }

  private _renderGauge(g: IGrant): HTMLElement {
    const total = Number(g.epsilon) || 0;
    const spent = Number(g.epsilon_spent) || 0;
    const left = Number(g.epsilon_left);
    const fraction = total > 0 ? Math.min(1, Math.max(0, spent / total)) : 1;
    const exhausted = !(left > 1e-9);
    const level = exhausted ? 'exhausted' : fraction >= 0.8 ? 'low' : 'ok';
    const bar = h('div', { class: 'jp-WorkbenchPanel-gaugeFill' });
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    const meter = h(
      'div',
      {
        class: 'jp-WorkbenchPanel-gaugeTrack',
        role: 'meter',
        'aria-valuemin': '0',
        'aria-valuemax': String(total),
        'aria-valuenow': String(spent),
        'aria-label': `epsilon spent on ${g.dataset}`
      },
      bar
    );
    const deltaText =
      g.delta !== null && g.delta !== undefined && Number(g.delta) > 0
        ? ` · δ ${formatAmount(g.delta_spent)} / ${formatAmount(g.delta)}`
        : '';
    return h(
      'div',
      {
        class: `jp-WorkbenchPanel-gauge jp-mod-${level}`,
        'data-grant': String(g.grant_id),
        'data-dataset': String(g.dataset)
      },
      h(
        'div',
        { class: 'jp-WorkbenchPanel-gaugeTitle' },
        h('strong', {}, String(g.dataset)),
        g.purpose ? h('span', { class: 'jp-WorkbenchPanel-muted' }, String(g.purpose)) : null
      ),
      meter,
      h(
        'div',
        { class: 'jp-WorkbenchPanel-gaugeText' },
        h(
          'span',
          { class: 'jp-WorkbenchPanel-spent' },
          `ε ${formatAmount(spent)} spent`
        ),
        h(
          'span',
          { class: 'jp-WorkbenchPanel-left' },
          exhausted
            ? 'budget exhausted'
            : `${formatAmount(left)} left of ${formatAmount(total)}`
        )
      ),
      h(
        'div',
        { class: 'jp-WorkbenchPanel-muted' },
        `grant ${g.grant_id}${deltaText}` +
          (g.expires_at ? ` · expires ${formatTime(g.expires_at)}` : '')
      )
    );
  }

  private _renderRequests(
    section: ISection<IAccessRequest[]>,
    stale: boolean
  ): Child[] {
    if (section.error?.code === 'not_supported' && !stale) {
      return [
        h(
          'div',
          { class: 'jp-WorkbenchPanel-empty', 'data-code': 'not_supported' },
          'Access requests are not supported by this node.'
        )
      ];
    }
    const out: Child[] = [
      this._sectionError(section, stale),
      this._staleNotice(section, stale)
    ];
    if (section.data === null) {
      if (!section.error && !stale) {
        out.push(notice('Loading…'));
      }
      return out;
    }
    if (section.data.length === 0) {
      out.push(notice('You have no access request on this node.'));
      return out;
    }
    const rows = section.data.map(r =>
      h(
        'tr',
        {
          class: 'jp-WorkbenchPanel-request',
          title: [r.note, r.reason].filter(x => x).map(x => String(x)).join(' · ')
        },
        h(
          'td',
          {},
          formatValue(r.dataset),
          r.purpose ? h('div', { class: 'jp-WorkbenchPanel-colDesc' }, String(r.purpose)) : null
        ),
        h('td', {}, formatAmount(r.epsilon)),
        h(
          'td',
          {},
          h(
            'span',
            {
              class: `jp-WorkbenchPanel-state jp-mod-${formatValue(r.status).toLowerCase()}`
            },
            formatValue(r.status)
          )
        ),
        h('td', {}, formatTime(r.created_at ?? r.time))
      )
    );
    out.push(table(['Dataset', 'ε', 'Status', 'Asked'], rows));
    return out;
  }

  private _renderHistory(section: ISection<IRelease[]>, stale: boolean): Child[] {
    const out: Child[] = [
      this._sectionError(section, stale),
      this._staleNotice(section, stale)
    ];
    if (section.data === null) {
      if (!section.error && !stale) {
        out.push(notice('Loading…'));
      }
      return out;
    }
    if (section.data.length === 0) {
      out.push(notice('No release yet.'));
      return out;
    }
    // Newest first.
    const releases = [...section.data].sort((a, b) =>
      String(b.time ?? '').localeCompare(String(a.time ?? ''))
    );
    const rows = releases.map(r =>
      h(
        'tr',
        {
          class: 'jp-WorkbenchPanel-release',
          title: `${r.time ?? ''}${r.grant_id ? ` · grant ${r.grant_id}` : ''}`
        },
        h('td', {}, formatTime(r.time)),
        h('td', {}, formatValue(r.dataset)),
        h(
          'td',
          {},
          (r.channel ? `${r.channel} · ` : '') +
            formatValue(r.kind) +
            (r.replayed ? ' (replayed)' : '')
        ),
        h('td', { class: 'jp-WorkbenchPanel-number' }, formatAmount(r.epsilon))
      )
    );
    out.push(table(['Time', 'Dataset', 'Kind', 'ε'], rows));
    return out;
  }

  private _status: HTMLElement;
  private _banner: HTMLElement;
  private _nodes: Section;
  private _catalog: Section;
  private _budgets: Section;
  private _requests: Section;
  private _history: Section;
}
