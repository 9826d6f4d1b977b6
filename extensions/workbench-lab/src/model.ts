import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI, WorkbenchAPIError } from './request';

/** How often the panel asks the server for fresh state, in milliseconds. */
export const DEFAULT_POLL_INTERVAL = 4000;

/** A user-facing error: the Workbench error code and a readable message. */
export interface IErrorInfo {
  code: string;
  message: string;
}

/** One connection from the user's Workbench configuration, as probed. */
export interface INodeStatus {
  name: string;
  url: string;
  /** up; down (unreachable); error (reachable, but refused us: token, protocol). */
  status: 'up' | 'down' | 'error';
  version?: string | null;
  protocol?: string | null;
  user?: string | null;
  role?: string | null;
  node_name?: string | null;
  error?: IErrorInfo | null;
}

/** A row of the catalogue (`node.catalog()`). */
export interface IDatasetSummary {
  name: string;
  tier?: string | null;
  description?: string | null;
  licence?: string | null;
  version?: string | number | null;
  columns?: number | null;
  [key: string]: unknown;
}

/** A column of a dataset schema. */
export interface IColumnInfo {
  name: string;
  type?: string | null;
  bounds?: unknown;
  categories?: unknown[] | null;
  description?: string | null;
  [key: string]: unknown;
}

/** A dataset's public schema (`node.dataset(name).schema`). */
export interface IDatasetInfo {
  name: string;
  tier?: string | null;
  description?: string | null;
  licence?: string | null;
  columns: IColumnInfo[];
  privacy_unit?: unknown;
  [key: string]: unknown;
}

/** One of my grants (`node.grants()`). */
export interface IGrant {
  grant_id: string | number;
  dataset: string;
  purpose?: string | null;
  epsilon: number;
  delta?: number | null;
  epsilon_spent: number;
  delta_spent?: number | null;
  epsilon_left: number;
  delta_left?: number | null;
  expires_at?: string | null;
  [key: string]: unknown;
}

/** One of my releases (`node.history()`). */
export interface IRelease {
  time?: string | null;
  dataset?: string | null;
  channel?: string | null;
  kind?: string | null;
  /** The question in readable form, as the node sends it (e.g. "mean(cost) where age >= 65 by sex"). */
  text?: string | null;
  column?: string | null;
  by?: string[] | null;
  epsilon?: number | null;
  delta?: number | null;
  grant_id?: string | number | null;
  replayed?: boolean | null;
  [key: string]: unknown;
}

/** One of my access requests (`node.requests()`); the shape is the node's. */
export interface IAccessRequest {
  [key: string]: unknown;
}

/** The last answer for one part of the panel. */
export interface ISection<T> {
  data: T | null;
  error: IErrorInfo | null;
}

/** Where a section's data comes from: `workbench/<endPoint>?node=NAME`, field `field` of the answer. */
export interface ISource {
  endPoint: string;
  field: string;
}

function emptySection<T>(): ISection<T> {
  return { data: null, error: null };
}

function toErrorInfo(error: unknown): IErrorInfo {
  if (error instanceof WorkbenchAPIError) {
    return { code: error.code, message: error.message };
  }
  return {
    code: 'client_error',
    message: error instanceof Error ? error.message : String(error)
  };
}

/**
 * State of the Workbench panel, refreshed by polling the server extension.
 *
 * Every few seconds (while the panel is visible and the page is not hidden)
 * it fetches the node list and, for the selected node, every source the
 * panel's sections declared with `addSource` (catalogue, grants, release
 * history, access requests, ...). Each part keeps its own error so one
 * failing endpoint never blanks the rest of the panel.
 */
export class WorkbenchModel implements IDisposable {
  constructor(options: WorkbenchModel.IOptions = {}) {
    const interval = options.interval ?? DEFAULT_POLL_INTERVAL;
    this._poll = new Poll({
      factory: () => this._fetchAll(),
      frequency: { interval, backoff: false, max: interval },
      standby: () => (this._active ? 'when-hidden' : true),
      name: 'workbench-lab:poll'
    });
  }

  /** Emitted whenever any part of the state changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get nodes(): ISection<INodeStatus[]> {
    return this._nodes;
  }
  /** The last answer for the source registered under `name`. */
  section<T>(name: string): ISection<T> {
    return (this._data.get(name) as ISection<T> | undefined) ?? emptySection<T>();
  }

  /** Whether any source has data (for "showing the last known state"). */
  get hasData(): boolean {
    return [...this._data.values()].some(x => x.data !== null);
  }

  /** Fetch `source` for the selected node on every poll, kept under `name`. */
  addSource(name: string, source: ISource): void {
    this._sources.set(name, source);
  }

  get schema(): ISection<IDatasetInfo> {
    return this._schema;
  }

  /** When the last poll finished. */
  get lastUpdated(): Date | null {
    return this._lastUpdated;
  }

  /** Whether a fetch is in flight. */
  get busy(): boolean {
    return this._busy > 0;
  }

  /** The node whose details are shown. */
  get selectedNode(): string | null {
    return this._selectedNode;
  }
  set selectedNode(name: string | null) {
    if (name === this._selectedNode) {
      return;
    }
    this._selectedNode = name;
    this._selectedDataset = null;
    this._data.clear();
    this._schema = emptySection();
    this._changed.emit();
    void this.refresh();
  }

  /** The dataset whose schema is shown, if any. */
  get selectedDataset(): string | null {
    return this._selectedDataset;
  }
  set selectedDataset(name: string | null) {
    if (name === this._selectedDataset) {
      return;
    }
    this._selectedDataset = name;
    this._schema = emptySection();
    this._changed.emit();
    if (name !== null) {
      void this._fetchSchema();
    }
  }

  /** Polling runs only while the panel is shown. */
  get active(): boolean {
    return this._active;
  }
  set active(value: boolean) {
    if (value === this._active) {
      return;
    }
    this._active = value;
    if (value) {
      void this.refresh();
    }
  }

  /** Fetch everything now (the refresh button), schema included. */
  async refresh(): Promise<void> {
    this._unsupported.clear();
    if (this._selectedDataset !== null) {
      void this._fetchSchema();
    }
    await this._poll.refresh();
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _fetchAll(): Promise<void> {
    const generation = ++this._generation;
    this._busy++;
    this._changed.emit();
    try {
      await this._fetchAllInner(generation);
    } finally {
      this._busy--;
      if (generation === this._generation) {
        this._lastUpdated = new Date();
      }
      this._changed.emit();
    }
  }

  private async _fetchAllInner(generation: number): Promise<void> {
    let nodes: INodeStatus[];
    try {
      const reply = await requestAPI<{ nodes: INodeStatus[] }>('nodes');
      nodes = reply.nodes;
      this._nodes = { data: nodes, error: null };
    } catch (error) {
      this._nodes = { data: this._nodes.data, error: toErrorInfo(error) };
      return;
    }

    if (nodes.length === 0) {
      this._selectedNode = null;
      return;
    }
    let selected = nodes.find(n => n.name === this._selectedNode);
    if (!selected) {
      selected = nodes.find(n => n.status === 'up') ?? nodes[0];
      this._selectedNode = selected.name;
      this._selectedDataset = null;
      this._schema = emptySection();
    }
    const node = selected.name;

    if (selected.status !== 'up') {
      const error: IErrorInfo = selected.error ?? {
        code: 'node_unreachable',
        message: `Node "${node}" is not reachable.`
      };
      // Keep the last data visible under the error, so a blip does not
      // blank the panel; the error says it may be stale.
      for (const name of this._sources.keys()) {
        this._data.set(name, { data: this.section(name).data, error });
      }
      return;
    }

    const names = [...this._sources.keys()];
    const answers = await Promise.all(names.map(name => this._fetchSource(node, name)));
    if (generation !== this._generation || node !== this._selectedNode) {
      return; // a newer fetch or another node took over
    }
    names.forEach((name, i) => this._data.set(name, answers[i]));
  }

  /**
   * One source of the selected node. An endpoint the node does not support
   * says so once; it is asked again only on an explicit refresh (no 501 in
   * the console every few seconds).
   */
  private async _fetchSource(node: string, name: string): Promise<ISection<unknown>> {
    const source = this._sources.get(name)!;
    const memo = `${node}\u0000${name}`;
    const unsupported = this._unsupported.get(memo);
    if (unsupported) {
      return { data: null, error: unsupported };
    }
    try {
      const reply = await requestAPI<Record<string, unknown>>(
        `${source.endPoint}?node=${encodeURIComponent(node)}`
      );
      return { data: reply[source.field], error: null };
    } catch (error) {
      const info = toErrorInfo(error);
      if (info.code === 'not_supported') {
        this._unsupported.set(memo, info);
      }
      return { data: null, error: info };
    }
  }

  private async _fetchSchema(): Promise<void> {
    const node = this._selectedNode;
    const dataset = this._selectedDataset;
    if (node === null || dataset === null) {
      return;
    }
    let result: ISection<IDatasetInfo>;
    try {
      const data = await requestAPI<IDatasetInfo>(
        `datasets/${encodeURIComponent(dataset)}?node=${encodeURIComponent(node)}`
      );
      result = { data, error: null };
    } catch (error) {
      result = { data: null, error: toErrorInfo(error) };
    }
    if (node === this._selectedNode && dataset === this._selectedDataset) {
      this._schema = result;
      this._changed.emit();
    }
  }

  private _active = false;
  private _busy = 0;
  private _changed = new Signal<this, void>(this);
  private _generation = 0;
  private _lastUpdated: Date | null = null;
  private _poll: Poll;
  private _unsupported = new Map<string, IErrorInfo>();
  private _selectedNode: string | null = null;
  private _selectedDataset: string | null = null;
  private _nodes: ISection<INodeStatus[]> = emptySection();
  private _sources = new Map<string, ISource>();
  private _data = new Map<string, ISection<unknown>>();
  private _schema: ISection<IDatasetInfo> = emptySection();
}

export namespace WorkbenchModel {
  export interface IOptions {
    /** Poll interval in milliseconds (default 4000). */
    interval?: number;
  }
}
