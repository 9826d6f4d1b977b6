import { Child, h } from '../dom';
import { formatAmount, formatTime } from '../format';
import { IGrant } from '../model';
import { IPanelSection, ISectionContext } from '../section';
import { sectionBody } from '../table';

/** One gauge per grant I hold: epsilon spent / left / total. */
export class BudgetsSection implements IPanelSection {
  readonly name = 'budgets';
  readonly title = 'Budgets (your grants)';
  readonly source = { endPoint: 'grants', field: 'grants' };

  key({ model, stale }: ISectionContext): unknown {
    return [model.section(this.name), stale];
  }

  render({ model, stale }: ISectionContext): Child[] {
    return sectionBody(
      model.section<IGrant[]>(this.name),
      stale,
      { empty: 'You hold no grant on this node.' },
      grants => grants.map(gauge)
    );
  }
}

function gauge(g: IGrant): HTMLElement {
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
      h('span', { class: 'jp-WorkbenchPanel-spent' }, `ε ${formatAmount(spent)} spent`),
      h(
        'span',
        { class: 'jp-WorkbenchPanel-left' },
        exhausted ? 'budget exhausted' : `${formatAmount(left)} left of ${formatAmount(total)}`
      )
    ),
    h(
      'div',
      { class: 'jp-WorkbenchPanel-muted' },
      `your grant ${g.grant_id}${deltaText}` + (g.expires_at ? ` · expires ${formatTime(g.expires_at)}` : '')
    )
  );
}
