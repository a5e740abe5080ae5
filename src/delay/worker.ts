/**
 * The delay line's own thread (started by line.ts): it sleeps in ppoll on the line's TAP
 * devices and a wake-up eventfd, with the time to the next release as the timeout, so a frame
 * is taken in as soon as it arrives and sent on when it is due, to the microsecond rather than
 * to Node's millisecond timers, and none of it waits on the main thread's event loop.
 *
 * Each round: frames waiting on the hold TAPs are taken in (HoldQueue), then the followers'
 * frames are written back at once with the held packets they free right behind them, then every
 * packet due is written back. Counters go to shared memory for the main thread to read.
 */
import { readSync, writeSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import { libc } from '../kernel/ffi.js';
import { HOLD_FOLLOWER_TAG } from '../compiler/layout.js';
import { connKeyOf } from './flow.js';
import { CONTROL, READY_FAILED, STAT_NAMES, STATS_OFFSET, type LineInit } from './line.js';
import { HoldQueue, type Release } from './queue.js';

/** Largest frame read from a TAP (64 KiB covers GSO-free frames of any MTU). */
const MAX_FRAME = 65536;
const POLLIN = 0x1;
const POLLFD_SIZE = 8;
/** Frames taken before the packets due are sent. */
const ROUND = 256;
/** The program's tag: 4 bytes after the two MAC addresses (codegen toDelayLine). */
const ETH_ADDRS = 12;
const TAG_SIZE = 4;

const nowNs = (): number => performance.now() * 1e6;

function run(init: LineInit): void {
  const control = new Int32Array(init.shared, 0, 4);
  const shared = new Float64Array(init.shared, STATS_OFFSET, STAT_NAMES.length);
  const queue = new HoldQueue<Buffer>(init.limits);
  const io = { received: 0, sent: 0, failed: 0 };
  const buf = Buffer.allocUnsafe(MAX_FRAME);
  const fds = [init.fd, init.wakeFd];
  const pollfds = Buffer.alloc(POLLFD_SIZE * fds.length);
  fds.forEach((fd, i) => {
    pollfds.writeInt32LE(fd, POLLFD_SIZE * i);
    pollfds.writeInt16LE(POLLIN, POLLFD_SIZE * i + 4);
  });
  const timeout = Buffer.alloc(16);

  /** Reads one frame into `buf`: its length, or undefined when none is waiting. */
  const read = (fd: number): number | undefined => {
    let n: number;
    try {
      n = readSync(fd, buf, 0, MAX_FRAME, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return undefined;
      throw err;
    }
    if (n <= 0) return undefined;
    io.received++;
    return n;
  };
  const write = (frame: Buffer): void => {
    try {
      writeSync(init.fd, frame);
      io.sent++;
    } catch {
      io.failed++;
    }
  };
  const send = (r: Release<Buffer>): void => write(r.item);
  const publish = (): void => {
    const s = { ...queue.stats, ...io };
    STAT_NAMES.forEach((name, i) => (shared[i] = s[name]));
  };

  Atomics.store(control, CONTROL.ready, 1);
  Atomics.notify(control, CONTROL.ready);
  while (Atomics.load(control, CONTROL.stop) === 0) {
    const next = queue.nextNs();
    let ts: Buffer | null = null;
    if (next !== undefined) {
      const wait = Math.max(0, Math.ceil(next - nowNs()));
      timeout.writeBigInt64LE(BigInt(Math.floor(wait / 1e9)), 0);
      timeout.writeBigInt64LE(BigInt(wait % 1e9), 8);
      ts = timeout;
    }
    for (let i = 0; i < fds.length; i++) pollfds.writeInt16LE(0, POLLFD_SIZE * i + 6);
    const ready = libc.ppoll(pollfds, fds.length, ts, null);
    if (Atomics.load(control, CONTROL.stop) !== 0) break;
    if (ready > 0 && (pollfds.readInt16LE(6) & POLLIN) !== 0) {
      // At most ROUND frames before the due packets leave (ppoll then says what is left).
      for (let round = 0; round < ROUND; round++) {
        const n = read(init.fd);
        if (n === undefined) break;
        const now = nowNs();
        // The outermost 802.1ad header is the program's tag: strip it.
        let tag = -1;
        let frame: Buffer;
        if (n >= ETH_ADDRS + TAG_SIZE && buf[ETH_ADDRS] === 0x88 && buf[ETH_ADDRS + 1] === 0xa8) {
          tag = buf.readUInt16BE(ETH_ADDRS + 2);
          frame = Buffer.allocUnsafe(n - TAG_SIZE);
          buf.copy(frame, 0, 0, ETH_ADDRS);
          buf.copy(frame, ETH_ADDRS, ETH_ADDRS + TAG_SIZE, n);
        } else {
          frame = Buffer.from(buf.subarray(0, n));
        }
        const spec = tag >= 0 && tag < init.specs.length ? init.specs[tag] : undefined;
        if (spec) {
          const flow = spec.kind === 'reorder' ? connKeyOf(frame).toString('hex') : undefined;
          if (!queue.hold(frame, frame.length, spec, now, flow)) send({ item: frame, spec, flow, arrivedNs: now, releaseNs: now });
        } else {
          write(frame);
          if (tag === HOLD_FOLLOWER_TAG) for (const r of queue.follow(connKeyOf(frame).toString('hex'), now)) send(r);
        }
      }
    }
    for (const r of queue.due(nowNs())) send(r);
    publish();
  }
  publish();
  Atomics.store(control, CONTROL.stopped, 1);
  Atomics.notify(control, CONTROL.stopped);
}

if (workerData) {
  const init = workerData as LineInit;
  const control = new Int32Array(init.shared, 0, 4);
  try {
    run(init);
  } catch (err) {
    // Wake a start() still waiting for the thread, then let the error reach the main thread.
    if (Atomics.load(control, CONTROL.ready) === 0) Atomics.store(control, CONTROL.ready, READY_FAILED);
    throw err;
  } finally {
    // stop() waits for this before it closes the TAPs; a thread that died must not keep it waiting.
    Atomics.store(control, CONTROL.stopped, 1);
    Atomics.notify(control, CONTROL.stopped);
    Atomics.notify(control, CONTROL.ready);
  }
}
