/**
 * The delay line proper: frames read from the TAP are held in a min-heap keyed by their
 * release time and written back when it comes. One timer (for the earliest release) and one
 * poll timer serve every held packet, and packets leave in the order of their release times.
 * Reads and writes are non-blocking syscalls on the main thread: nothing waits in the kernel.
 */
import { readSync, writeSync } from 'node:fs';

/** How often the TAP is drained while idle, in milliseconds (the added error of a delay is about this). */
const POLL_MS = 1;
/** Largest frame read from the TAP (64 KiB covers GSO-free frames of any MTU). */
const MAX_FRAME = 65536;

export interface DelaySpec {
  /** Base delay in nanoseconds. */
  ns: number;
  /** Uniform jitter: each packet is held ns ± jitterNs (at least 0). */
  jitterNs?: number;
}

export interface DelayLineStats {
  /** Frames read from the TAP. */
  received: number;
  /** Frames written back. */
  sent: number;
  /** Frames the write back failed for (dropped). */
  failed: number;
  /** Frames held right now. */
  held: number;
}

interface Held {
  releaseMs: number;
  seq: number;
  frame: Buffer;
}

/** A binary min-heap of held frames by (release time, arrival order). */
class ReleaseHeap {
  private items: Held[] = [];
  get size(): number {
    return this.items.length;
  }
  peek(): Held | undefined {
    return this.items[0];
  }
  push(h: Held): void {
    const a = this.items;
    a.push(h);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): Held | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
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

const before = (x: Held, y: Held): boolean => x.releaseMs < y.releaseMs || (x.releaseMs === y.releaseMs && x.seq < y.seq);

const nowMs = (): number => performance.now();

/** Holds frames read from `fd` for their delay and writes them back to `fd`. */
export class DelayLine {
  private readonly heap = new ReleaseHeap();
  private readonly buf = Buffer.allocUnsafe(MAX_FRAME);
  private seq = 0;
  private pollTimer: NodeJS.Timeout | undefined;
  private releaseTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  readonly stats: DelayLineStats = { received: 0, sent: 0, failed: 0, held: 0 };

  constructor(private readonly fd: number, private readonly spec: DelaySpec, private readonly random: () => number = Math.random) {
    this.pollTimer = setInterval(() => this.drain(), POLL_MS);
    // The session's own lifetime keeps the process alive; the line alone should not.
    this.pollTimer.unref();
  }

  /** How long a packet is held, in milliseconds: the delay, spread uniformly by the jitter. */
  holdMs(): number {
    const jitter = this.spec.jitterNs ?? 0;
    const ns = jitter > 0 ? this.spec.ns + (this.random() * 2 - 1) * jitter : this.spec.ns;
    return Math.max(0, ns) / 1e6;
  }

  /** Reads every frame waiting on the TAP into the heap. */
  private drain(): void {
    if (this.stopped) return;
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.buf, 0, MAX_FRAME, null);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') break;
        throw err;
      }
      if (n <= 0) break;
      const arrived = nowMs();
      this.stats.received++;
      this.heap.push({ releaseMs: arrived + this.holdMs(), seq: this.seq++, frame: Buffer.from(this.buf.subarray(0, n)) });
    }
    this.stats.held = this.heap.size;
    this.release();
  }

  /** Writes back every frame whose time has come, then sets one timer for the next. */
  private release(): void {
    if (this.stopped) return;
    const now = nowMs();
    for (let h = this.heap.peek(); h && h.releaseMs <= now; h = this.heap.peek()) {
      this.heap.pop();
      try {
        writeSync(this.fd, h.frame);
        this.stats.sent++;
      } catch {
        this.stats.failed++;
      }
    }
    this.stats.held = this.heap.size;
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.releaseTimer = undefined;
    const next = this.heap.peek();
    if (next) {
      this.releaseTimer = setTimeout(() => this.release(), Math.max(0, next.releaseMs - now));
      this.releaseTimer.unref();
    }
  }

  /** Stops reading and releasing; held frames are dropped (the TAP goes away with them). */
  stop(): void {
    this.stopped = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.heap.clear();
    this.stats.held = 0;
  }
}
