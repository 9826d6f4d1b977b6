import { IErrorInfo } from './model';

/** Headlines for the error codes a user can act on. */
export const ERROR_TITLES: Record<string, string> = {
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

/** What a render function may return: nodes, text, or nothing. */
export type Child = Node | string | null | undefined | false;

/** Build an element; text is always set as text, never parsed as HTML. */
export function h(
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

/** A box stating an error: its headline, the message, and whether data is stale. */
export function errorBox(error: IErrorInfo, stale = false): HTMLElement {
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

/** A muted one-line notice (empty section, loading). */
export function notice(text: string): HTMLElement {
  return h('div', { class: 'jp-WorkbenchPanel-empty' }, text);
}

/** Make an element act on click and on Enter / Space (keyboard users). */
export function onActivate(el: HTMLElement, action: () => void): void {
  el.addEventListener('click', action);
  el.addEventListener('keydown', event => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      action();
    }
  });
}
