/** Format an epsilon/delta amount compactly (0.35, 1e-6, 12.5). */
export function formatAmount(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  const x = Number(value);
  if (!Number.isFinite(x)) {
    return String(value);
  }
  if (x !== 0 && Math.abs(x) < 1e-3) {
    return x.toExponential(1);
  }
  return String(Number(x.toFixed(3)));
}

/** Any value as short text (objects as JSON, missing as a dash). */
export function formatValue(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  if (typeof value === 'object') {
    return JSON.stringify(value);
  }
  return String(value);
}

/** A number from the schema: integers stay integers (0 – 100, not 0.0 – 100.0). */
function formatBound(value: unknown, integer: boolean): string {
  const x = Number(value);
  if (integer && Number.isFinite(x)) {
    return String(Math.round(x));
  }
  return formatAmount(value);
}

/** Public bounds `[lo, hi]` as "lo – hi"; int columns without decimals. */
export function formatBounds(value: unknown, type?: unknown): string {
  if (Array.isArray(value) && value.length === 2) {
    const integer = type === 'int';
    return `${formatBound(value[0], integer)} – ${formatBound(value[1], integer)}`;
  }
  return formatValue(value);
}

/** Who the node protects: "one patient_id (up to 1 row)", "one row". */
export function formatPrivacyUnit(value: unknown): string {
  if (value === null || value === undefined) {
    return 'one row';
  }
  if (typeof value === 'string') {
    return value;
  }
  const unit = value as { id_column?: string | null; max_contributions?: number };
  const max = unit.max_contributions ?? 1;
  if (!unit.id_column) {
    return max > 1 ? `up to ${max} rows` : 'one row';
  }
  return `one ${unit.id_column} (up to ${max} row${max === 1 ? '' : 's'})`;
}

/** A time: the clock time today, a short date and time otherwise. */
export function formatTime(value: unknown): string {
  if (value === null || value === undefined || value === '') {
    return '—';
  }
  const date = new Date(String(value));
  if (Number.isNaN(date.getTime())) {
    return String(value);
  }
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString()
    : date.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}
