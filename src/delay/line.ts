/**
 * The live delay line: frames the rule's program sent to the line's TAP device are read,
 * held in a HoldQueue (queue.ts) and written back when they are due, on a thread of the line's
 * own (worker.ts) that sleeps in ppoll until a frame arrives or the next one is due.
 *
 * Each frame carries the program's tag (an outermost 802.1ad header): the hold spec (a
 * distinct `delay` or `reorder`) it is to be held by, or that it is a follower of `reorder` (a
 * packet of a connection with held packets, which goes back at once and counts towards
 * releasing them). One device keeps the order they came in; the line strips the tag and writes
 * everything back into the TAP, whose program sends it on.
 */
import { closeSync, existsSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NetmangleError } from '../errors.js';
import { printable } from '../printable.js';
import { errno, errnoName, libc } from '../kernel/ffi.js';
import { DEFAULT_HOLD_LIMITS, type HoldLimits, type HoldSpec } from './queue.js';
import type { DelayLineStats } from './stats.js';

/** The counters in shared memory, in this order (Float64Array after the control words). */
export const STAT_NAMES = ['held', 'heldBytes', 'delayed', 'reordered', 'overLimit', 'followers', 'overtaken', 'timedOut', 'peakHeld', 'received', 'sent', 'failed'] as const;
/** Int32 control words at the start of the shared buffer: stop requested, stopped, ready. */
export const CONTROL = { stop: 0, stopped: 1, ready: 2 } as const;
/** CONTROL.ready once the thread runs, or READY_FAILED when it could not start. */
export const READY_FAILED = 2;
export const STATS_OFFSET = 16;

export interface LineInit {
  /** The TAP: every frame on it is tagged (codegen toDelayLine) with its index in `specs` or HOLD_FOLLOWER_TAG. */
  fd: number;
  specs: HoldSpec[];
  wakeFd: number;
  limits: HoldLimits;
  shared: SharedArrayBuffer;
}

import { workerThreads } from '../builtins.js';

export type { DelayLineStats } from './stats.js';

export interface DelayLineOptions {
  limits?: HoldLimits;
  /** Called once if the line's thread stops by itself (an error): held packets are lost. */
  onFailure?: (message: string) => void;
}

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
/** How long start() waits for the thread to be ready, and stop() for it to finish. */
const START_MS = 10_000;
const STOP_MS = 2_000;

/**
 * The parent's Node options without the code it was started to run (`node -e CODE`, `-p`) and
 * `--input-type`, which a worker inherits by default: it would run that code instead of its file.
 */
function workerExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print' || a === '--input-type') {
      i++;
      continue;
    }
    if (/^(--eval|--print|--input-type)=/.test(a) || a === '-pe') {
      if (a === '-pe') i++;
      continue;
    }
    out.push(a);
  }
  return out;
}

/** worker.js next to this module (from a bundle, import.meta.url names this module's place in dist/src). */
function workerFile(): string {
  const here = fileURLToPath(new URL('./worker.js', import.meta.url));
  if (existsSync(here)) return here;
  throw new NetmangleError(`the delay line's worker script is missing (${here})`, { hint: 'rebuild netmangle: npm run build' });
}

export class DelayLine {
  private readonly shared = new SharedArrayBuffer(STATS_OFFSET + 8 * STAT_NAMES.length);
  private readonly control = new Int32Array(this.shared, 0, 4);
  private readonly counters = new Float64Array(this.shared, STATS_OFFSET, STAT_NAMES.length);
  private worker: import('node:worker_threads').Worker | undefined;
  private wakeFd = -1;
  private stopped = false;
  private failed = false;

  /** `fd`: the TAP the frames come from and go back to; `specs`: the holds, by tag. */
  constructor(private readonly fd: number, private readonly specs: readonly HoldSpec[], private readonly opts: DelayLineOptions = {}) {}

  /** Starts the line's thread. Returns once it is ready. */
  start(): void {
    if (this.worker || this.stopped) return;
    this.wakeFd = libc.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.wakeFd < 0) throw new NetmangleError(`cannot start the delay line: eventfd: ${errnoName(errno())}`);
    const init: LineInit = {
      fd: this.fd,
      specs: [...this.specs],
      wakeFd: this.wakeFd,
      limits: this.opts.limits ?? DEFAULT_HOLD_LIMITS,
      shared: this.shared,
    };
    const worker = new (workerThreads().Worker)(workerFile(), { workerData: init, execArgv: workerExecArgv() });
    this.worker = worker;
    worker.on('error', (err) => {
      if (this.stopped || this.failed) return;
      this.failed = true;
      const message = `the delay line stopped: ${err.message}`;
      if (this.opts.onFailure) this.opts.onFailure(message);
      else process.stderr.write(`netmangle: ${printable(message)}; held packets are lost and chosen packets are dropped\n`);
    });
    // The session's own lifetime keeps the process alive; the line alone should not.
    worker.unref();
    const waited = Atomics.wait(this.control, CONTROL.ready, 0, START_MS);
    if (waited === 'timed-out' || Atomics.load(this.control, CONTROL.ready) === READY_FAILED) {
      this.stop();
      throw new NetmangleError(waited === 'timed-out' ? `the delay line's thread did not start within ${START_MS / 1000} s` : "the delay line's thread could not start", {
        hint: 'rebuild netmangle (npm run build); if it persists, run with NETMANGLE_DEBUG=1 and report the error',
      });
    }
  }

  get stats(): DelayLineStats {
    return { ...Object.fromEntries(STAT_NAMES.map((name, i) => [name, this.counters[i]!])), lost: 0 } as unknown as DelayLineStats;
  }

  /** Stops the thread and waits for it; held frames are dropped (the TAPs go away with them). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.worker) {
      Atomics.store(this.control, CONTROL.stop, 1);
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      try {
        writeSync(this.wakeFd, one);
      } catch {
        // Nothing to wake: the thread is gone already.
      }
      // Wait until the thread is out of its loop: only then may the TAP descriptors be closed
      // (a number closed under it could be reused by the next open).
      if (Atomics.load(this.control, CONTROL.ready) === 1) Atomics.wait(this.control, CONTROL.stopped, 0, STOP_MS);
      void this.worker.terminate();
    }
    if (this.wakeFd >= 0) closeSync(this.wakeFd);
  }
}
