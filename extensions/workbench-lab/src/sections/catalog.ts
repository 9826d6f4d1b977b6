import { Child, errorBox, h, notice, onActivate } from '../dom';
import { formatAmount, formatBounds, formatPrivacyUnit, formatValue } from '../format';
import { IDatasetSummary, WorkbenchModel } from '../model';
import { IPanelSection, ISectionContext } from '../section';
import { row, sectionBody, table } from '../table';
import { renderAgreement } from './agreement';

/** The selected node's datasets; click one to unfold its public schema. */
export class CatalogSection implements IPanelSection {
  readonly name = 'catalog';
  readonly title = 'Catalogue';
  readonly source = { endPoint: 'catalog', field: 'datasets' };

  key({ model, stale }: ISectionContext): unknown {
    return [model.section(this.name), model.selectedDataset, model.schema, stale];
  }

  render({ model, stale }: ISectionContext): Child[] {
    const section = model.section<IDatasetSummary[]>(this.name);
    if (section.data === null && !section.error && !stale && !model.selectedNode) {
      return [notice('No node selected.')];
    }
    return sectionBody(section, stale, { empty: 'This node publishes no dataset you can see.' }, datasets => {
      const rows: HTMLElement[] = [];
      for (const d of datasets) {
        const isOpen = d.name === model.selectedDataset;
        rows.push(datasetRow(model, d, isOpen));
        if (isOpen) {
          rows.push(
            h('tr', { class: 'jp-WorkbenchPanel-schemaRow' }, h('td', { colspan: '3' }, schemaBox(model, d)))
          );
        }
      }
      return [table(['Dataset', 'Tier', 'Licence'], rows)];
    });
  }
}

function datasetRow(model: WorkbenchModel, d: IDatasetSummary, isOpen: boolean): HTMLElement {
  const tr = row(
    {
      class: 'jp-WorkbenchPanel-dataset' + (isOpen ? ' jp-mod-selected' : ''),
      'data-dataset': d.name,
      title: d.description ? String(d.description) : d.name,
      tabindex: '0'
    },
    [h('span', { class: 'jp-WorkbenchPanel-caret' }, isOpen ? '▾' : '▸'), d.name],
    [h('span', { class: 'jp-WorkbenchPanel-tier' }, formatValue(d.tier))],
    [formatValue(d.licence)]
  );
  (tr.firstChild as HTMLElement).classList.add('jp-WorkbenchPanel-datasetName');
  onActivate(tr, () => {
    model.selectedDataset = isOpen ? null : d.name;
  });
  return tr;
}

/** The dataset cap is the owner's limit for everyone, not the analyst's grant: say so. */
function capFact(summary: IDatasetSummary): HTMLElement | null {
  const cap = summary.dataset_cap_epsilon;
  if (cap === null || cap === undefined || cap === '') {
    return null;
  }
  return h(
    'span',
    {
      class: 'jp-WorkbenchPanel-cap',
      title: "The owner's limit on what all analysts together may spend on this dataset; your own budget is your grant (see Budgets)."
    },
    `Dataset cap (all analysts): ε ${formatAmount(cap)}`
  );
}

function schemaBox(model: WorkbenchModel, summary: IDatasetSummary): HTMLElement {
  const schema = model.schema;
  const box = h('div', { class: 'jp-WorkbenchPanel-schema', 'data-dataset': summary.name });
  if (schema.error) {
    box.appendChild(errorBox(schema.error));
    return box;
  }
  const info = schema.data;
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
  const facts: Child[] = [h('span', {}, `Privacy unit: ${formatPrivacyUnit(info.privacy_unit)}`)];
  const version = info.version ?? summary.version;
  if (version !== undefined && version !== null && version !== '') {
    const text = String(version);
    facts.push(h('span', { title: text }, `Version: ${text.length > 22 ? text.slice(0, 20) + '…' : text}`));
  }
  facts.push(capFact(summary));
  box.appendChild(h('p', { class: 'jp-WorkbenchPanel-facts jp-WorkbenchPanel-muted' }, ...facts));
  const rows = (info.columns ?? []).map(c => {
    const range =
      c.categories && c.categories.length
        ? c.categories.map(x => String(x)).join(', ')
        : c.bounds !== null && c.bounds !== undefined
          ? formatBounds(c.bounds, c.type)
          : '';
    return row(
      { 'data-column': c.name },
      [
        h('span', { class: 'jp-WorkbenchPanel-colName' }, c.name),
        c.description ? h('div', { class: 'jp-WorkbenchPanel-colDesc' }, String(c.description)) : null
      ],
      [
        h('span', { class: 'jp-WorkbenchPanel-colType' }, formatValue(c.type)),
        range ? h('div', { class: 'jp-WorkbenchPanel-colRange' }, range) : null
      ]
    );
  });
  box.appendChild(table(['Column', 'Type and range'], rows));
  return box;
}
