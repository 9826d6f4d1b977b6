import { Child, h } from '../dom';
import { formatAmount, formatTime, formatValue } from '../format';
import { IRelease } from '../model';
import { IPanelSection, ISectionContext } from '../section';
import { pager, sectionBody } from '../table';

/** Releases shown per page of the history. */
export const HISTORY_PAGE_SIZE = 8;

/** Longest question shown whole; a longer one is cut (its full text is the tooltip). */
export const QUESTION_CHARS = 120;

/**
 * The question of a release in readable form: the node's own text when it
 * sends one (`text` in `GET /v1/history`, e.g. "mean(cost) by region"),
 * else built from kind / column / by, else the channel and kind.
 */
export function readableQuestion(r: IRelease): string {
  if (r.text) {
    return String(r.text);
  }
  const kind = formatValue(r.kind);
  const call = r.column ? `${kind}(${r.column})` : kind;
  const by = Array.isArray(r.by) && r.by.length ? ` by ${r.by.join(', ')}` : '';
  const channel = r.channel && r.channel !== 'dp' ? `${r.channel} · ` : '';
  return `${channel}${call}${by}`;
}

/** ``question`` cut to QUESTION_CHARS (at a word break where there is one) with an ellipsis. */
export function shortQuestion(question: string): string {
  if (question.length <= QUESTION_CHARS) {
    return question;
  }
  const cut = question.slice(0, QUESTION_CHARS);
  const space = cut.lastIndexOf(' ');
  return (space > QUESTION_CHARS / 2 ? cut.slice(0, space) : cut).replace(/[,\s]+$/, '') + ' …';
}

/** My releases, newest first, a page at a time; each wraps to the sidebar's width. */
export class HistorySection implements IPanelSection {
  readonly name = 'history';
  readonly title = 'Release history';
  readonly source = { endPoint: 'history', field: 'releases' };

  key({ model, stale }: ISectionContext): unknown {
    return [model.section(this.name), stale, this._page];
  }

  render({ model, stale, rerender }: ISectionContext): Child[] {
    return sectionBody(model.section<IRelease[]>(this.name), stale, { empty: 'No release yet.' }, data => {
      const releases = [...data].sort((a, b) => String(b.time ?? '').localeCompare(String(a.time ?? '')));
      const pages = Math.ceil(releases.length / HISTORY_PAGE_SIZE);
      this._page = Math.min(this._page, pages - 1);
      const shown = releases.slice(this._page * HISTORY_PAGE_SIZE, (this._page + 1) * HISTORY_PAGE_SIZE);
      return [
        h('ol', { class: 'jp-WorkbenchPanel-releases' }, ...shown.map(releaseItem)),
        pager(this._page, HISTORY_PAGE_SIZE, releases.length, page => {
          this._page = page;
          rerender();
        })
      ];
    });
  }

  private _page = 0;
}

function releaseItem(r: IRelease): HTMLElement {
  const replayed = !!r.replayed;
  const question = readableQuestion(r);
  const cost = replayed
    ? 'replay · free'
    : `ε ${formatAmount(r.epsilon)}` + (Number(r.delta) > 0 ? ` · δ ${formatAmount(r.delta)}` : '');
  return h(
    'li',
    {
      class: 'jp-WorkbenchPanel-release' + (replayed ? ' jp-mod-replayed' : ''),
      title: `${r.time ?? ''}${r.grant_id ? ` · grant ${r.grant_id}` : ''}`
    },
    h('div', { class: 'jp-WorkbenchPanel-question', title: question }, shortQuestion(question)),
    h(
      'div',
      { class: 'jp-WorkbenchPanel-releaseMeta' },
      h('span', { class: 'jp-WorkbenchPanel-releaseCost' }, cost),
      h('span', {}, formatValue(r.dataset)),
      h('span', { class: 'jp-WorkbenchPanel-muted' }, formatTime(r.time))
    )
  );
}
