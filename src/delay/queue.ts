/**
 * The delay line's bookkeeping, without a clock or a device of its own: which packets are held,
 * until when, and in which order they leave. The live line (line.ts) drives it with the
 * monotonic clock and a TAP device; replay drives it with the capture's timestamps. So a rule
 * delays and reorders offline exactly as it would live, up to the clock.
 *
 * - `delay` holds a packet for its delay (drawn from the rule's distribution).
 * - `reorder by N` holds a packet until N later packets of its connection have gone by
 *   (`follow`), or until its timeout.
 * Packets leave in the order of their release times (ties: arrival order). One heap serves every
 * held packet; a reorder packet freed by its followers leaves the heap lazily.
 * Beyond the limits (packets or bytes held), a packet is not held: `hold` says so, the caller
 * sends it on at once, and it is counted.
 */
import type { DelayDistribution } from '../rules/ast.js';

export type HoldSpec =
  | { kind: 'delay'; ns: number; jitterNs?: number; distribution?: DelayDistribution }
  | { kind: 'reorder'; by: number; timeoutNs: number };

export interface HoldLimits {
  /** Most packets held at once. */
  packets: number;
  /** Most bytes held at once. */
  bytes: number;
}

export const DEFAULT_HOLD_LIMITS: HoldLimits = { packets: 10_000, bytes: 64 * 1024 * 1024 };

export interface HoldStats {
  /** Packets held right now, and their bytes. */
  held: number;
  heldBytes: number;
  /** Packets taken in to be held (by delay, by reorder). */
  delayed: number;
  reordered: number;
  /** Packets not held because the line was full (sent on at once). */
  overLimit: number;
  /** Packets of connections with held packets that went by (sent on at once). */
  followers: number;
  /** Reorder packets sent on because enough later packets overtook them, or by their timeout. */
  overtaken: number;
  timedOut: number;
  /** Most packets held at one time. */
  peakHeld: number;
}

export interface Release<T> {
  item: T;
  spec: HoldSpec;
  /** The connection (reorder only), as given to hold(). */
  flow?: string;
  /** When it was taken in and when it leaves, on the caller's clock (ns). */
  arrivedNs: number;
  releaseNs: number;
}

interface Entry<T> extends Release<T> {
  seq: number;
  bytes: number;
  /** Reorder: later packets still to overtake it. */
  remaining: number;
  gone: boolean;
}

/** A binary min-heap by (release time, arrival order). */
class ReleaseHeap<T> {
  private items: Array<Entry<T>> = [];
  get size(): number {
    return this.items.length;
  }
  peek(): Entry<T> | undefined {
    return this.items[0];
  }
  push(e: Entry<T>): void {
    const a = this.items;
    a.push(e);
    for (let i = a.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): Entry<T> | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && before(a[l]!, a[m]!)) m = l;
        if (r < a.length && before(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
  clear(): void {
    this.items = [];
  }
}

const before = <T>(x: Entry<T>, y: Entry<T>): boolean => x.releaseNs < y.releaseNs || (x.releaseNs === y.releaseNs && x.seq < y.seq);

/** A uniform draw in [0, 1): Math.random, or seeded (mulberry32) for results a seed repeats. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * How long `delay` holds one packet, in ns (never below 0):
 * uniform: delay ± jitter; normal: mean delay, standard deviation jitter; pareto: a Pareto
 * distribution of shape 3 shifted to mean delay and standard deviation jitter (a heavy tail of
 * long holds, most packets a little under the delay).
 */
export function drawDelayNs(spec: Extract<HoldSpec, { kind: 'delay' }>, random: () => number): number {
  const j = spec.jitterNs ?? 0;
  if (j <= 0) return spec.ns;
  let ns: number;
  switch (spec.distribution ?? 'uniform') {
    case 'uniform':
      ns = spec.ns + (random() * 2 - 1) * j;
      break;
    case 'normal': {
      // Box-Muller; 1 - random() is in (0, 1], so the logarithm is finite.
      const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
      ns = spec.ns + z * j;
      break;
    }
    case 'pareto': {
      const shape = 3;
      const scale = (j * 2) / Math.sqrt(3); // standard deviation of Pareto(scale, 3) is scale·√3/2
      ns = spec.ns - 1.5 * scale + scale * Math.pow(1 - random(), -1 / shape);
      break;
    }
  }
  return Math.max(0, ns);
}

export class HoldQueue<T> {
  private readonly heap = new ReleaseHeap<T>();
  /** Reorder packets held per connection, in arrival order. */
  private readonly byFlow = new Map<string, Array<Entry<T>>>();
  private seq = 0;
  readonly stats: HoldStats = { held: 0, heldBytes: 0, delayed: 0, reordered: 0, overLimit: 0, followers: 0, overtaken: 0, timedOut: 0, peakHeld: 0 };

  constructor(private readonly limits: HoldLimits = DEFAULT_HOLD_LIMITS, private readonly random: () => number = Math.random) {}

  /**
   * Takes a packet in (`bytes` long, at `nowNs`); `flow` names its connection (reorder). Returns
   * false when the line is full: the caller sends the packet on at once.
   */
  hold(item: T, bytes: number, spec: HoldSpec, nowNs: number, flow?: string): boolean {
    if (this.stats.held + 1 > this.limits.packets || this.stats.heldBytes + bytes > this.limits.bytes) {
      this.stats.overLimit++;
      return false;
    }
    const releaseNs = nowNs + (spec.kind === 'delay' ? drawDelayNs(spec, this.random) : spec.timeoutNs);
    const e: Entry<T> = { item, spec, flow, arrivedNs: nowNs, releaseNs, seq: this.seq++, bytes, remaining: spec.kind === 'reorder' ? spec.by : 0, gone: false };
    this.heap.push(e);
    if (spec.kind === 'reorder') {
      this.stats.reordered++;
      const list = this.byFlow.get(flow ?? '');
      if (list) list.push(e);
      else this.byFlow.set(flow ?? '', [e]);
    } else {
      this.stats.delayed++;
    }
    this.stats.held++;
    this.stats.heldBytes += bytes;
    if (this.stats.held > this.stats.peakHeld) this.stats.peakHeld = this.stats.held;
    return true;
  }

  /** Whether some reorder packet of `flow` is held. */
  holds(flow: string): boolean {
    return this.byFlow.has(flow);
  }

  /**
   * A later packet of `flow` goes by (the caller sends it on now). Returns the held packets it
   * was the last to overtake, to be sent right after it, in arrival order.
   */
  follow(flow: string, nowNs: number): Array<Release<T>> {
    this.stats.followers++;
    const list = this.byFlow.get(flow);
    if (!list) return [];
    const out: Array<Entry<T>> = [];
    for (const e of list) {
      if (--e.remaining > 0) continue;
      e.gone = true;
      e.releaseNs = nowNs;
      this.stats.overtaken++;
      this.leave(e);
      out.push(e);
    }
    const rest = list.filter((e) => !e.gone);
    if (rest.length > 0) this.byFlow.set(flow, rest);
    else this.byFlow.delete(flow);
    return out.map(release);
  }

  /** Held packets whose release time is at or before `nowNs`, in release order. */
  due(nowNs: number): Array<Release<T>> {
    const out: Array<Release<T>> = [];
    for (let e = this.heap.peek(); e && (e.gone || e.releaseNs <= nowNs); e = this.heap.peek()) {
      this.heap.pop();
      if (e.gone) continue;
      e.gone = true;
      if (e.spec.kind === 'reorder') {
        this.stats.timedOut++;
        this.forget(e);
      }
      this.leave(e);
      out.push(release(e));
    }
    return out;
  }

  /** Release time of the next packet due, if any. */
  nextNs(): number | undefined {
    for (let e = this.heap.peek(); e; e = this.heap.peek()) {
      if (!e.gone) return e.releaseNs;
      this.heap.pop();
    }
    return undefined;
  }

  /** Every packet still held, in release order (the end of a capture). */
  flush(): Array<Release<T>> {
    return this.due(Number.POSITIVE_INFINITY);
  }

  /** Drops every held packet. */
  clear(): void {
    this.heap.clear();
    this.byFlow.clear();
    this.stats.held = 0;
    this.stats.heldBytes = 0;
  }

  private leave(e: Entry<T>): void {
    this.stats.held--;
    this.stats.heldBytes -= e.bytes;
  }

  private forget(e: Entry<T>): void {
    const flow = e.flow ?? '';
    const list = this.byFlow.get(flow);
    if (!list) return;
    const rest = list.filter((x) => x !== e);
    if (rest.length > 0) this.byFlow.set(flow, rest);
    else this.byFlow.delete(flow);
  }
}

const release = <T>(e: Entry<T>): Release<T> => ({ item: e.item, spec: e.spec, flow: e.flow, arrivedNs: e.arrivedNs, releaseNs: e.releaseNs });
