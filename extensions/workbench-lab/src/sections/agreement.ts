/**
 * The sharing agreement of a dataset (catalogue rows carry it as `agreement`,
 * protocol 2 nodes only): purposes, channels, licence, who may be granted,
 * expiry and the largest grant, shown under the dataset's schema.
 */

interface IAgreement {
  id?: string;
  purposes?: string[];
  channels?: string[];
  licence?: string;
  grantee_claims?: Record<string, string[]>;
  expires?: string | null;
  max_grant?: { epsilon: number; delta: number } | null;
}

function line(label: string, value: string): HTMLElement {
  const item = document.createElement('li');
  const name = document.createElement('strong');
  name.textContent = `${label}: `;
  item.appendChild(name);
  item.appendChild(document.createTextNode(value));
  return item;
}

/** A box listing the agreement's clauses, or null when the dataset has none. */
export function renderAgreement(raw: unknown): HTMLElement | null {
  if (raw === null || typeof raw !== 'object') {
    return null;
  }
  const a = raw as IAgreement;
  const box = document.createElement('div');
  box.className = 'jp-WorkbenchPanel-agreement';
  const title = document.createElement('p');
  title.textContent = `Sharing agreement${a.id ? ` ${a.id}` : ''}`;
  box.appendChild(title);
  const list = document.createElement('ul');
  list.appendChild(line('Purposes', a.purposes?.length ? a.purposes.join(', ') : 'any'));
  list.appendChild(line('Channels', (a.channels ?? []).join(', ') || 'none'));
  if (a.licence) {
    list.appendChild(line('Licence', a.licence));
  }
  for (const [claim, allowed] of Object.entries(a.grantee_claims ?? {})) {
    list.appendChild(line(`Grantees' ${claim}`, allowed.join(', ')));
  }
  if (a.expires) {
    list.appendChild(line('Ends', a.expires));
  }
  if (a.max_grant) {
    list.appendChild(
      line('Largest grant', `ε ${a.max_grant.epsilon}, δ ${a.max_grant.delta}`)
    );
  }
  box.appendChild(list);
  return box;
}
