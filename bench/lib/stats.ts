/**
 * Small statistics for benchmarks on a shared, noisy machine: medians of interleaved rounds
 * and ratios against an anchor measured in the same rounds.
 */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values);
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

/**
 * The median of per-round ratios a[i] / b[i]. Pairing each candidate with the anchor of the
 * same round cancels slow drifts of the machine's speed that a ratio of medians would keep.
 */
export function medianRatio(a: readonly number[], b: readonly number[]): number {
  if (a.length !== b.length) throw new Error(`medianRatio: ${a.length} values against ${b.length}`);
  return median(a.map((x, i) => x / b[i]!));
}

/**
 * Runs every variant once per round, A B C A B C …, reversing the order on odd rounds so no
 * variant always runs right after the same neighbour (caches, CPU frequency). Returns each
 * variant's measurements in round order.
 */
export async function interleave<K extends string>(
  rounds: number,
  variants: ReadonlyArray<readonly [K, () => number | Promise<number>]>,
): Promise<Record<K, number[]>> {
  const out = Object.fromEntries(variants.map(([k]) => [k, [] as number[]])) as Record<K, number[]>;
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? variants : [...variants].reverse();
    for (const [k, measure] of order) out[k].push(await measure());
  }
  return out;
}

/** Relative spread of a set of measurements: (max - min) / median. */
export function spread(values: readonly number[]): number {
  return (max(values) - min(values)) / median(values);
}
