/** Markdown for BENCHMARKS.md: tables and number formats. */

/** A Markdown table; the first row is the header. Cells may not contain newlines; '|' is escaped. */
export function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>, align?: ReadonlyArray<'l' | 'r'>): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const sep = header.map((_, i) => ((align?.[i] ?? (i === 0 ? 'l' : 'r')) === 'r' ? '---:' : '---'));
  const lines = [header, sep, ...rows].map((r, i) => `| ${(i === 1 ? r : r.map(cell)).join(' | ')} |`);
  return lines.join('\n');
}

/** A number with `digits` significant digits, or "n/a" when it is not finite. */
export function sig(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (value === 0) return '0';
  const magnitude = Math.floor(Math.log10(Math.abs(value)));
  const decimals = Math.max(0, digits - 1 - magnitude);
  return value.toFixed(decimals);
}

/** A ratio as "0.87×". */
export function ratio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}×` : 'n/a';
}

/** An integer with thin thousands separators: 1 234 567. */
export function int(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return Math.round(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ' ');
}

/** Nanoseconds with one decimal. */
export function ns(value: number): string {
  return Number.isFinite(value) ? value.toFixed(1) : 'n/a';
}

/** Milliseconds with sensible precision. */
export function ms(value: number): string {
  return Number.isFinite(value) ? `${sig(value, 3)} ms` : 'n/a';
}

/** "met" / "not met" for a goal, with the comparison spelled out. */
export function verdict(met: boolean): string {
  return met ? 'met' : '**not met**';
}
