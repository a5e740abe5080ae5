/**
 * The live delay line: frames the rule's program sent to the line's TAP devices are read,
 * held in a HoldQueue (queue.ts) on the monotonic clock, and written back when they are due.
 *
 * Each hold spec (a distinct `delay` or `reorder`) has its own TAP, so the line knows how to
 * hold what it reads; a last TAP takes the followers of `reorder` (packets of connections with
 * held packets, which go back at once and count towards releasing them). Everything is written
 * back through one TAP, whose program sends it on. Reads and writes are non-blocking syscalls on
 * the main thread, drained every millisecond: nothing waits in the kernel.
 */
import { readSync, writeSync } from 'node:fs';
import type { BpfMap } from '../kernel/map.js';
import { connKeyOf } from './flow.js';
import { uncountHeld } from './held.js';
import { DEFAULT_HOLD_LIMITS, HoldQueue, type HoldLimits, type HoldSpec, type HoldStats, type Release } from './queue.js';

/** How often the TAPs are drained, in milliseconds (the added error of a delay is about this). */
const POLL_MS = 1;
/** Largest frame read from a TAP (64 KiB covers GSO super-packets of any MTU). */
const MAX_FRAME = 65536;

export interface DelayLineStats extends HoldStats {
  /** Frames read from the TAPs. */
  received: number;
  /** Frames written back. */
  sent: number;
  /** Frames the write back failed for (dropped). */
  failed: number;
}

export interface LineChannel {
  fd: number;
  /** How to hold what this TAP delivers; undefined: the followers' TAP. */
  spec?: HoldSpec;
}

export interface DelayLineOptions {
  limits?: HoldLimits;
  random?: () => number;
}

const nowNs = (): number => performance.now() * 1e6;

export class DelayLine {
  private readonly queue: HoldQueue<Buffer>;
  private readonly buf = Buffer.allocUnsafe(MAX_FRAME);
  private pollTimer: NodeJS.Timeout | undefined;
  private releaseTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private heldMap: BpfMap | undefined;
  private readonly io = { received: 0, sent: 0, failed: 0 };

  /** `channels`: the TAPs to read, hold channels first; `writeFd`: where frames go back. */
  constructor(private readonly channels: readonly LineChannel[], private readonly writeFd: number, opts: DelayLineOptions = {}) {
    this.queue = new HoldQueue<Buffer>(opts.limits ?? DEFAULT_HOLD_LIMITS, opts.random);
    this.pollTimer = setInterval(() => this.drain(), POLL_MS);
    // The session's own lifetime keeps the process alive; the line alone should not.
    this.pollTimer.unref();
  }

  /** The program's HELD_MAP, where the line takes a packet off its connection's count when it leaves. */
  useHeldMap(map: BpfMap): void {
    this.heldMap = map;
  }

  get stats(): DelayLineStats {
    return { ...this.queue.stats, ...this.io };
  }

  /** Reads every frame waiting on the TAPs: held ones first, then followers. */
  private drain(): void {
    if (this.stopped) return;
    for (const ch of this.channels) {
      for (let frame = this.read(ch.fd); frame; frame = this.read(ch.fd)) {
        const now = nowNs();
        if (ch.spec) {
          const flow = ch.spec.kind === 'reorder' ? connKeyOf(frame).toString('hex') : undefined;
          if (!this.queue.hold(frame, frame.length, ch.spec, now, flow)) this.send({ item: frame, spec: ch.spec, flow, arrivedNs: now, releaseNs: now });
        } else {
          this.write(frame);
          for (const r of this.queue.follow(connKeyOf(frame).toString('hex'), now)) this.send(r);
        }
      }
    }
    this.release();
  }

  private read(fd: number): Buffer | undefined {
    let n: number;
    try {
      n = readSync(fd, this.buf, 0, MAX_FRAME, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return undefined;
      throw err;
    }
    if (n <= 0) return undefined;
    this.io.received++;
    return Buffer.from(this.buf.subarray(0, n));
  }

  private write(frame: Buffer): void {
    try {
      writeSync(this.writeFd, frame);
      this.io.sent++;
    } catch {
      this.io.failed++;
    }
  }

  /** Sends a packet on; a reorder packet leaves its connection's count in HELD_MAP. */
  private send(r: Release<Buffer>): void {
    this.write(r.item);
    if (r.spec.kind === 'reorder' && r.flow !== undefined) this.uncount(Buffer.from(r.flow, 'hex'));
  }

  private uncount(key: Buffer): void {
    const map = this.heldMap;
    if (!map) return;
    try {
      uncountHeld(map, key);
    } catch {
      // The map went with the program (detach in progress): nothing left to count.
    }
  }

  /** Sends every packet whose time has come, then sets one timer for the next. */
  private release(): void {
    if (this.stopped) return;
    for (const r of this.queue.due(nowNs())) this.send(r);
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.releaseTimer = undefined;
    const next = this.queue.nextNs();
    if (next !== undefined) {
      this.releaseTimer = setTimeout(() => this.release(), Math.max(0, (next - nowNs()) / 1e6));
      this.releaseTimer.unref();
    }
  }

  /** Stops reading and releasing; held frames are dropped (the TAPs go away with them). */
  stop(): void {
    this.stopped = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.queue.clear();
  }
}
