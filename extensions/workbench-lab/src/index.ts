import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

import { WorkbenchModel } from './model';
import { WorkbenchPanel } from './panel';

namespace CommandIDs {
  export const open = 'workbench:open';
  export const refresh = 'workbench:refresh';
}

/**
 * The Workbench sidebar plugin: declares the panel, its commands and its
 * place in the left area. State lives in `model.ts`, the view in `panel.ts`.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'workbench-lab:plugin',
  description:
    'A sidebar showing Workbench nodes, the catalogue, privacy budgets, access requests and release history.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const model = new WorkbenchModel();
    const panel = new WorkbenchPanel(model);
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, 'workbench-lab');
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show Workbench Panel',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Workbench Panel',
      execute: () => model.refresh()
    });
  }
};

export default plugin;
