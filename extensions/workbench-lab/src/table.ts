import { Child, errorBox, h, notice } from './dom';
import { ISection } from './model';

/** A table of the panel's style: a header row and the given body rows. */
export function table(headers: string[], rows: HTMLElement[]): HTMLElement {
  return h(
    'table',
    { class: 'jp-WorkbenchPanel-table' },
    h('thead', {}, h('tr', {}, ...headers.map(x => h('th', {}, x)))),
    h('tbody', {}, ...rows)
  );
}

/** One table row; a string cell becomes text, an element is placed as is. */
export function row(attrs: Record<string, string>, ...cells: Child[][]): HTMLElement {
  return h('tr', attrs, ...cells.map(cell => h('td', {}, ...cell)));
}

/** What a section shows while it has no rows of its own to show. */
export interface IStateTexts {
  /** Shown when the node answered with an empty list. */
  empty: string;
  /** Shown before the first answer (default "Loading…"). */
  loading?: string;
}

/**
 * The part every data section shares: its error (unless the banner already
 * says it), "Not available" while the node is down and nothing is known,
 * "Loading…" before the first answer, the empty text for an empty list, and
 * otherwise `render(rows)`.
 */
export function sectionBody<T>(
  section: ISection<T[]>,
  stale: boolean,
  texts: IStateTexts,
  render: (rows: T[]) => Child[]
): Child[] {
  const out: Child[] = [];
  if (section.error && !stale) {
    out.push(errorBox(section.error));
  }
  if (section.data === null) {
    if (stale) {
      out.push(notice('Not available (see the message above).'));
    } else if (!section.error) {
      out.push(notice(texts.loading ?? 'Loading…'));
    }
    return out;
  }
  if (section.data.length === 0) {
    out.push(notice(texts.empty));
    return out;
  }
  return out.concat(render(section.data));
}

/**
 * "1–10 of 23" with Newer / Older buttons; `go(page)` switches pages.
 * Returns null when everything fits on one page.
 */
export function pager(
  page: number,
  pageSize: number,
  total: number,
  go: (page: number) => void
): HTMLElement | null {
  if (total <= pageSize) {
    return null;
  }
  const pages = Math.ceil(total / pageSize);
  const first = page * pageSize + 1;
  const last = Math.min(total, first + pageSize - 1);
  const button = (label: string, target: number, enabled: boolean) => {
    const b = h(
      'button',
      { class: 'jp-WorkbenchPanel-pageButton jp-mod-styled', 'data-page': String(target) },
      label
    ) as HTMLButtonElement;
    b.disabled = !enabled;
    b.addEventListener('click', () => go(target));
    return b;
  };
  return h(
    'div',
    { class: 'jp-WorkbenchPanel-pager' },
    button('‹ Newer', page - 1, page > 0),
    h('span', { class: 'jp-WorkbenchPanel-pageInfo' }, `${first}–${last} of ${total}`),
    button('Older ›', page + 1, page < pages - 1)
  );
}
