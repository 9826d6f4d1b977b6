import { requestAPI } from '../request';

/** Children accepted by `el`: nodes, text, or nothing. */
export type Kid = Node | string | null | undefined | false;

/** Build an element; text is always set as text, never parsed as HTML. */
export function el(
  tag: string,
  attrs: Record<string, string> = {},
  ...children: Kid[]
): HTMLElement {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      node.appendChild(
        typeof child === 'string' ? document.createTextNode(child) : child
      );
    }
  }
  return node;
}

/** A small styled button running `action` on click. */
export function actionButton(
  label: string,
  action: () => void,
  attrs: Record<string, string> = {}
): HTMLElement {
  const button = el(
    'button',
    { class: 'jp-WorkbenchPanel-action jp-mod-styled', ...attrs },
    label
  );
  button.addEventListener('click', event => {
    event.stopPropagation();
    action();
  });
  return button;
}

export interface IAccessRequest {
  request_id: number;
  user: string;
  dataset: string;
  purpose: string;
  epsilon: number;
  delta: number;
  note: string;
}

export interface IReviewItem {
  review_id: number;
  user: string;
  dataset: string;
  channel: string;
  kind: string;
  summary: Record<string, unknown> | null;
}

export interface ICheck {
  check: string;
  ok: boolean;
  detail: string;
}

export interface IJobOutput {
  name: string;
  media_type: string;
  size: number;
  log: boolean;
  problem: string | null;
  checks: ICheck[];
  flagged: boolean;
  status: string | null;
  preview: string | null;
}

export interface ICodeJob {
  job_id: number;
  user: string;
  dataset: string;
  dataset_version: string;
  code_name: string;
  kind: string;
  code_hash: string;
  approval_hash: string;
  parameters: Record<string, unknown>;
  outputs: string[];
  purpose: string;
  note: string;
  dp_epsilon: number;
  status: string;
  error: string | null;
  approved_by: string | null;
  approved_with_job: number | null;
  results: IJobOutput[];
  code?: string | null;
  diff?: string | null;
  previous_approved_job?: number | null;
}

export interface IOwnerQueue {
  node: string;
  requests: IAccessRequest[];
  reviews: IReviewItem[];
  jobs: ICodeJob[];
}

/** One decision sent through the server extension; the node decides who may make it. */
export async function decide(
  node: string,
  kind: 'requests' | 'reviews' | 'jobs',
  id: number,
  action: string,
  body: Record<string, unknown> = {}
): Promise<void> {
  await requestAPI(
    `owner/${kind}/${id}/${action}?node=${encodeURIComponent(node)}`,
    { method: 'POST', body: JSON.stringify(body) }
  );
}
