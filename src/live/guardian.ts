/**
 * Crash safety for what netmangle attaches through netlink (cls_bpf filters on clsact, IFLA_XDP):
 * unlike a BPF link, such an attachment stays when the process that made it dies.
 *
 * - Before each netlink attachment (and after each step of it) the owner writes a record in
 *   /run/netmangle/owned/<pid>.<n>.json: owner pid and start time, namespace by name and inode,
 *   interface name and ifindex, hook, filter priority and handle (or XDP mode), program id and
 *   tag, whether netmangle added the clsact qdisc. Detaching removes the record.
 * - The first such attachment of a process starts its guardian: `netmangle guardian` in a
 *   session of its own (so the terminal's Ctrl-C and the owner's process group do not reach it),
 *   which opens a pidfd on the owner and sleeps in ppoll on it. When the owner exits, whatever
 *   records it left (a crash leaves all of them) are acted on: each program still on its hook
 *   with the recorded id is removed (see removeHold), then the record, and the owner's
 *   /run/netmangle/runs records too. Then the guardian exits: one guardian per owner process.
 * - If the guardian dies as well, the records stay: `status` lists them as orphans ("owner 1234
 *   is gone"), `clear` removes them by the same checks, and `run` on such a hook refuses and
 *   names the exact `netmangle clear` command.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetmangleError } from '../errors.js';
import { holdState, removeHold, type HoldState, type NetlinkHold, type NetlinkOwner } from '../kernel/netlink-hold.js';
import { openPidfd, processAlive, processStartTime, selfRef, waitForExit, type ProcessRef } from '../kernel/process.js';
import { OWNED_DIR, RUNS_DIR } from './paths.js';

export interface OwnedRecord extends NetlinkHold {
  owner: ProcessRef;
  /** The guardian watching the owner, when one was started. */
  guardian?: ProcessRef;
  /** What was attached, for status: the rules (name and text) or an object file's program. */
  rules?: Array<{ name: string; text: string }>;
  since: string;
}

function readRecord(file: string): OwnedRecord | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as OwnedRecord;
  } catch {
    return undefined;
  }
}

/** Whole or not at all, for a guardian or status reading it at the same moment. */
function writeRecord(file: string, rec: OwnedRecord): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(rec));
  renameSync(tmp, file);
}

function ownedFiles(): string[] {
  try {
    return readdirSync(OWNED_DIR).filter((n) => n.endsWith('.json')).sort().map((n) => join(OWNED_DIR, n));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// The owner's side

let guardian: ProcessRef | undefined;
let guardianFailed = false;
/** Settles true once the current guardian watches this process, false if it stopped first. */
let ready: Promise<boolean> = Promise.resolve(false);
let recordCount = 0;
/** When guardians of this process stopped unexpectedly (to give up restarting in a loop). */
const stops: number[] = [];
const RESTARTS_PER_MINUTE = 3;
/** This process's records on disk, rewritten when a new guardian takes over. */
const liveRecords = new Map<string, OwnedRecord>();

/** bin/netmangle, from dist/src/live/ (unbundled) or the bundle (whose import.meta.url is rewritten to the same). */
const BIN = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));

/**
 * Starts this process's guardian unless it runs already; returns it (undefined if it could not
 * be started). Call it outside `inNetns`: a process started there would live in that namespace.
 * It does not wait for the guardian to be up (guardianReady does): a guardian that starts after
 * its owner died finds it gone at once and cleans up all the same. A guardian that stops while
 * this process lives (killed by someone) is replaced, up to 3 times a minute.
 */
export function startGuardian(): ProcessRef | undefined {
  if (guardian || guardianFailed) return guardian;
  const me = selfRef();
  let child;
  try {
    child = spawn(process.execPath, [BIN, 'guardian', '--owner', `${me.pid}:${me.startTime}`], {
      detached: true, stdio: ['ignore', 'pipe', 'ignore'], cwd: '/',
    });
  } catch (err) {
    return giveUp(`cannot start it: ${(err as Error).message}`);
  }
  child.on('error', () => {});
  const pid = child.pid;
  if (pid === undefined) return giveUp('cannot start it');
  const started: ProcessRef = { pid, startTime: processStartTime(pid) ?? 0 };
  guardian = started;
  const out = child.stdout!;
  ready = new Promise<boolean>((resolve) => {
    out.once('data', () => {
      resolve(true);
      out.destroy();
    });
    out.once('close', () => resolve(false));
  });
  // The pipe must not keep this process alive, nor a guardian's own exit wait on it.
  (out as unknown as { unref?: () => void }).unref?.();
  // It exits only after this process does, so any exit seen here is a guardian lost.
  child.once('exit', (code, signal) => {
    if (guardian !== started) return;
    guardian = undefined;
    const now = Date.now();
    stops.push(now);
    while (stops.length && stops[0]! < now - 60_000) stops.shift();
    const why = signal ?? `exit ${code}`;
    if (stops.length > RESTARTS_PER_MINUTE) {
      giveUp(`it stopped (${why}) ${stops.length} times within a minute`);
      return;
    }
    const next = startGuardian();
    if (!next) return;
    for (const [file, rec] of liveRecords) writeRecordOf(file, { ...rec, guardian: next });
    // Said once the new one watches (a crash from then on is covered again).
    void ready.then((up) => {
      if (up) process.stderr.write(`netmangle: note: the guardian process stopped (${why}); started another (pid ${next.pid})\n`);
    });
  });
  child.unref();
  return guardian;
}

/** How long run and load wait for their guardian before saying "attached" without it. */
export const GUARDIAN_WAIT_MS = 10_000;

/**
 * Resolves once this process's guardian watches it (true), or when it could not (false), or
 * after `timeoutMs` (false, with a warning): from then on a crash of this process is covered.
 */
export async function guardianReady(timeoutMs = GUARDIAN_WAIT_MS): Promise<boolean> {
  if (!guardian) return false;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    // Kept referenced: it is what keeps this process running while it waits.
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const ok = await Promise.race([ready, late]);
  clearTimeout(timer);
  if (!ok && guardian) {
    process.stderr.write(`netmangle: warning: the guardian is not up after ${timeoutMs / 1000} s: until it is, a crash leaves netlink attachments behind (netmangle status lists them)\n`);
  }
  return ok;
}

function giveUp(why: string): undefined {
  guardianFailed = true;
  guardian = undefined;
  process.stderr.write(`netmangle: warning: no guardian (${why}): if netmangle dies now, its netlink attachments stay (netmangle status lists them)\n`);
  return undefined;
}

function writeRecordOf(file: string, rec: OwnedRecord): void {
  try {
    writeRecord(file, rec);
  } catch {
    // Gone meanwhile (detached): nothing to update.
  }
}

/**
 * A NetlinkOwner for one attachment: writes and removes its record, and makes sure the
 * guardian runs. `rules` is what status shows for it.
 */
export function guardedOwner(rules?: Array<{ name: string; text: string }>): NetlinkOwner {
  const owner = selfRef();
  const file = join(OWNED_DIR, `${owner.pid}.${recordCount++}.json`);
  const since = new Date().toISOString();
  return {
    prepare(): void {
      mkdirSync(OWNED_DIR, { recursive: true });
      startGuardian();
    },
    record(hold: NetlinkHold): void {
      const rec: OwnedRecord = { ...hold, owner, guardian, rules, since };
      writeRecord(file, rec);
      liveRecords.set(file, rec);
    },
    forget(): void {
      liveRecords.delete(file);
      rmSync(file, { force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The guardian's side

export interface CleanupOutcome {
  record: OwnedRecord;
  removed: boolean;
  clsactRemoved: boolean;
  state: HoldState;
}

/**
 * Removes what the dead `owner` left attached (exactly the programs its records name, each
 * still with its recorded id), its records, and its foreground-run records. A record whose
 * namespace no name reaches any more is kept, for status.
 */
export function cleanUpAfter(owner: ProcessRef): CleanupOutcome[] {
  const out: CleanupOutcome[] = [];
  for (const file of ownedFiles()) {
    const rec = readRecord(file);
    if (!rec || rec.owner.pid !== owner.pid || rec.owner.startTime !== owner.startTime) continue;
    let result;
    try {
      result = removeHold(rec);
    } catch {
      continue; // kept: status shows it, clear tries again
    }
    if (result.state !== 'unreachable') rmSync(file, { force: true });
    out.push({ record: rec, ...result });
  }
  removeRunRecords(owner);
  return out;
}

function removeRunRecords(owner: ProcessRef): void {
  let names: string[];
  try {
    names = readdirSync(RUNS_DIR);
  } catch {
    return;
  }
  for (const n of names) {
    if (!n.startsWith(`${owner.pid}.`)) continue;
    const file = join(RUNS_DIR, n);
    try {
      const rec = JSON.parse(readFileSync(file, 'utf8')) as { startTime?: number };
      if (rec.startTime !== undefined && rec.startTime !== owner.startTime) continue;
    } catch { /* half-written by the dead owner: its own */ }
    rmSync(file, { force: true });
  }
}

/**
 * The guardian: watches `owner` (saying "ready" on stdout once it does), waits for it to exit,
 * cleans up after it. Its owner's normal exit detached everything already and left no records:
 * then there is nothing to do.
 */
export function guard(owner: ProcessRef): void {
  const pidfd = openPidfd(owner);
  try {
    // A pipe: written at once (synchronously on Linux), before the wait blocks this thread.
    process.stdout.write('ready\n');
  } catch {
    // The owner no longer listens: no matter.
  }
  if (pidfd !== undefined) waitForExit(pidfd);
  cleanUpAfter(owner);
}

// ---------------------------------------------------------------------------------------------
// Orphans: records whose owner and guardian are both gone

export interface Orphan extends OwnedRecord {
  file: string;
  state: HoldState;
}

/** Attachments left behind by dead owners whose guardian is dead too; records of programs no longer attached are swept. */
export function listOrphans(filter: { netns?: string; dev?: string; hook?: string } = {}): Orphan[] {
  const out: Orphan[] = [];
  for (const file of ownedFiles()) {
    const rec = readRecord(file);
    if (!rec) continue;
    if (processAlive(rec.owner) || (rec.guardian && processAlive(rec.guardian))) continue;
    if (filter.dev !== undefined && rec.dev !== filter.dev) continue;
    if (filter.netns !== undefined && rec.netns !== filter.netns) continue;
    if (filter.hook !== undefined && rec.hook !== filter.hook) continue;
    let state: HoldState;
    try {
      state = holdState(rec);
    } catch {
      state = 'unreachable';
    }
    if (state === 'gone') {
      rmSync(file, { force: true });
      continue;
    }
    out.push({ ...rec, file, state });
  }
  return out;
}

/** Removes the orphans matching `filter` (each only if its recorded program is still on its hook). */
export function clearOrphans(filter: { netns?: string; dev?: string; hook?: string } = {}): Orphan[] {
  const removed: Orphan[] = [];
  for (const o of listOrphans(filter)) {
    const r = removeHold(o);
    if (r.state === 'unreachable') continue;
    rmSync(o.file, { force: true });
    if (r.removed) removed.push(o);
  }
  return removed;
}

/** `netmangle clear …` that removes exactly this orphan's hook. */
export function clearCommandFor(o: { netns?: string; dev: string; hook: string }): string {
  return `netmangle clear${o.netns !== undefined ? ` --netns ${o.netns}` : ''} --dev ${o.dev} --hook ${o.hook}`;
}

/** Refuses a hook that holds a netmangle orphan, with the command that removes it. */
export function refuseOrphanedHook(where: { netns?: string; dev: string; hook: string }): void {
  const [o] = listOrphans({ dev: where.dev, hook: where.hook }).filter((x) => x.state === 'attached' && x.netns === where.netns);
  if (!o) return;
  throw new NetmangleError(
    `${where.dev} ${where.hook}${where.netns !== undefined ? ` (netns ${where.netns})` : ''} still holds program id ${o.progId} '${o.progName}', left attached by netmangle (owner ${o.owner.pid} is gone)`,
    { hint: `remove it with: ${clearCommandFor(o)}` },
  );
}

interface HolderRecord {
  dev: string;
  hook: string;
  netns?: string;
  pid?: number;
  startTime?: number;
  progId: number;
  path?: string;
  tcFilter?: { prio: number; handle: number };
}

function holders(): HolderRecord[] {
  const out: HolderRecord[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(RUNS_DIR).filter((n) => n.endsWith('.json'));
  } catch { /* none */ }
  for (const n of names) {
    try {
      out.push(JSON.parse(readFileSync(join(RUNS_DIR, n), 'utf8')) as HolderRecord);
    } catch { /* half-written or gone */ }
  }
  for (const file of ownedFiles()) {
    const rec = readRecord(file);
    if (rec) out.push({ ...rec, pid: rec.owner.pid, startTime: rec.owner.startTime, path: 'netlink' });
  }
  return out;
}

/**
 * Refuses a hook another live netmangle process holds in a way that excludes a second program:
 * XDP (one program per interface), or the same tc filter priority asked for explicitly.
 * Names that process's pid. (tc without a priority stacks after it, as tcx does.)
 */
export function refuseHeldHook(where: { netns?: string; dev: string; hook: string; priority?: number }): void {
  if (where.hook !== 'xdp' && where.priority === undefined) return;
  for (const h of holders()) {
    if (h.dev !== where.dev || h.hook !== where.hook || (h.netns ?? undefined) !== where.netns || h.pid === undefined) continue;
    if (h.pid === process.pid) continue;
    const alive = h.startTime !== undefined ? processAlive({ pid: h.pid, startTime: h.startTime }) : processStartTime(h.pid) !== undefined;
    if (!alive) continue;
    if (where.hook !== 'xdp' && !(h.path === 'netlink' && h.tcFilter?.prio === where.priority)) continue;
    const at = where.hook === 'xdp' ? '' : ` at priority ${where.priority}`;
    throw new NetmangleError(
      `${where.dev} ${where.hook}${where.netns !== undefined ? ` (netns ${where.netns})` : ''} is held by netmangle run ${h.pid} (program id ${h.progId}${at})`,
      { hint: where.hook === 'xdp' ? `stop that run first (Ctrl-C where it runs, or kill -INT ${h.pid}), or attach at tc ingress` : `stop that run first (kill -INT ${h.pid}), or choose another priority` },
    );
  }
}
