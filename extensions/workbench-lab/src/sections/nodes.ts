import { Child, ERROR_TITLES, h, notice, onActivate } from '../dom';
import { INodeStatus, WorkbenchModel } from '../model';
import { IPanelSection, ISectionContext } from '../section';

/** The configured nodes, probed: up / down / error; click one to select it. */
export class NodesSection implements IPanelSection {
  readonly name = 'nodes';
  readonly title = 'Nodes';

  key({ model }: ISectionContext): unknown {
    return [model.nodes, model.selectedNode];
  }

  render({ model }: ISectionContext): Child[] {
    const nodes = model.nodes.data;
    if (nodes === null) {
      return model.nodes.error ? [] : [notice('Loading…')];
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
        ...nodes.map(n => nodeItem(model, n, n.name === model.selectedNode))
      )
    ];
  }
}

function nodeItem(model: WorkbenchModel, n: INodeStatus, selected: boolean): HTMLElement {
  const detail =
    n.status === 'up'
      ? [n.version ? `v${n.version}` : null, n.user ? `${n.user}${n.role ? ` (${n.role})` : ''}` : null]
          .filter(x => x)
          .join(' · ')
      : n.status === 'down'
        ? 'down'
        : (ERROR_TITLES[n.error?.code ?? ''] ?? 'error').toLowerCase();
  const item = h(
    'li',
    {
      class: 'jp-WorkbenchPanel-node' + (selected ? ' jp-mod-selected' : ''),
      'data-node': n.name,
      'data-status': n.status,
      title: n.url,
      tabindex: '0'
    },
    h('span', { class: `jp-WorkbenchPanel-dot jp-mod-${n.status}`, 'aria-label': n.status }),
    h('span', { class: 'jp-WorkbenchPanel-nodeName' }, n.name),
    h('span', { class: 'jp-WorkbenchPanel-muted' }, detail)
  );
  onActivate(item, () => {
    model.selectedNode = n.name;
  });
  return item;
}
