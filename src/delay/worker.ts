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
import { connKeyOf } from './flow.js';
import { CONTROL, READY_FAILED, STAT_NAMES, STATS_OFFSET, type LineInit } from './line.js';
import { HoldQueue, type Release } from './queue.js';

/** Largest frame read from a TAP (64 KiB covers GSO-free frames of any MTU). */
const MAX_FRAME = 65536;
const POLLIN = 0x1;
const POLLFD_SIZE = 8;
/** Frames taken from each TAP before the packets due are sent (ppoll then says what is left). */
const ROUND = 256;

const nowNs = (): number => performance.now() * 1e6;

function run(init: LineInit): void {
  const control = new Int32Array(init.shared, 0, 4);
  const shared = new Float64Array(init.shared, STATS_OFFSET, STAT_NAMES.length);
  const queue = new HoldQueue<Buffer>(init.limits);
  const io = { received: 0, sent: 0, failed: 0 };
  const buf = Buffer.allocUnsafe(MAX_FRAME);
  const fds = [...init.channels.map((c) => c.fd), init.wakeFd];
  const pollfds = Buffer.alloc(POLLFD_SIZE * fds.length);
  fds.forEach((fd, i) => {
    pollfds.writeInt32LE(fd, POLLFD_SIZE * i);
    pollfds.writeInt16LE(POLLIN, POLLFD_SIZE * i + 4);
  });
  const timeout = Buffer.alloc(16);

  const read = (fd: number): Buffer | undefined => {
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
    return Buffer.from(buf.subarray(0, n));
  };
  const write = (frame: Buffer): void => {
    try {
      writeSync(init.writeFd, frame);
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
    if (ready > 0) {
      // One frame from each TAP in turn, not each TAP drained in one go: the TAPs cannot say
      // in which order their frames came, and taking them in turn keeps the order of a held
      // packet and its followers whenever they alternate (a held packet, then later packets).
      // At most ROUND frames a TAP before the due packets leave.
      const open = init.channels.map((_, i) => (pollfds.readInt16LE(POLLFD_SIZE * i + 6) & POLLIN) !== 0);
      for (let round = 0; round < ROUND && open.some(Boolean); round++) {
        init.channels.forEach((ch, i) => {
          if (!open[i]) return;
          const frame = read(ch.fd);
          if (!frame) {
            open[i] = false;
            return;
          }
          const now = nowNs();
          if (ch.spec) {
            const flow = ch.spec.kind === 'reorder' ? connKeyOf(frame).toString('hex') : undefined;
            if (!queue.hold(frame, frame.length, ch.spec, now, flow)) send({ item: frame, spec: ch.spec, flow, arrivedNs: now, releaseNs: now });
          } else {
            write(frame);
            for (const r of queue.follow(connKeyOf(frame).toString('hex'), now)) send(r);
          }
        });
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
