import { Child, h } from '../dom';
import { formatAmount, formatTime, formatValue } from '../format';
import { IAccessRequest } from '../model';
import { IPanelSection, ISectionContext } from '../section';
import { row, sectionBody, table } from '../table';

/** My access requests and their status. */
export class RequestsSection implements IPanelSection {
  readonly name = 'requests';
  readonly title = 'Access requests';
  readonly source = { endPoint: 'requests', field: 'requests' };

  key({ model, stale }: ISectionContext): unknown {
    return [model.section(this.name), stale];
  }

  render({ model, stale }: ISectionContext): Child[] {
    const section = model.section<IAccessRequest[]>(this.name);
    if (section.error?.code === 'not_supported' && !stale) {
      return [
        h(
          'div',
          { class: 'jp-WorkbenchPanel-empty', 'data-code': 'not_supported' },
          'Access requests are not supported by this node.'
        )
      ];
    }
    return sectionBody(section, stale, { empty: 'You have no access request on this node.' }, requests => [
      table(['Dataset', 'ε', 'Status', 'Asked'], requests.map(requestRow))
    ]);
  }
}

function requestRow(r: IAccessRequest): HTMLElement {
  const status = formatValue(r.status);
  return row(
    {
      class: 'jp-WorkbenchPanel-request',
      title: [r.note, r.reason].filter(x => x).map(x => String(x)).join(' · ')
    },
    [
      formatValue(r.dataset),
      r.purpose ? h('div', { class: 'jp-WorkbenchPanel-colDesc' }, String(r.purpose)) : null
    ],
    [formatAmount(r.epsilon)],
    [h('span', { class: `jp-WorkbenchPanel-state jp-mod-${status.toLowerCase()}` }, status)],
    [formatTime(r.created_at ?? r.time)]
  );
}
