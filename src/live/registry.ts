/**
 * What netmangle has attached, for `status` and `clear`.
 *
 * - A pinned rule set (`run --pin`) lives in bpffs under /sys/fs/bpf/netmangle/<netns>/<dev>/<hook>/
 *   (`link` when attached through a BPF link, `prog`, `state`), with a record of its rules in
 *   /run/netmangle/pinned/<netns>.<dev>.<hook>.json.
 * - A foreground `run` (or a library fault) records itself in /run/netmangle/runs/<pid>.<run>.<n>.json (program and state
 *   map ids) and removes the record on exit; records of dead processes are ignored and swept.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import type { DelayLineStats } from '../delay/stats.js';
import { dirname, join } from 'node:path';
import { NetmangleError } from '../errors.js';
import { NETMANGLE_PIN_ROOT, openPinnedMap, BpfMap, mapFdById, pinObject } from '../kernel/index.js';
import { removeHold } from '../kernel/netlink-hold.js';
import { inNetns } from '../kernel/netns.js';
import { ifindexByName } from '../kernel/iface.js';
import { STATE_MAP, type RuleCounters } from '../compiler/index.js';
import { readStateCounters, type AttachedGroup } from './index.js';

import { PINNED_DIR, RUNS_DIR } from './paths.js';
import { clearOrphans, listOrphans, type Orphan } from './guardian.js';
import { processAlive, selfRef } from '../kernel/process.js';

export interface AttachmentRecord {
  dev: string;
  hook: 'xdp' | 'ingress' | 'egress';
  netns?: string;
  path: 'link' | 'tcx' | 'netlink';
  progId: number;
  stateMapId: number;
  seed: number;
  rules: Array<{ name: string; text: string }>;
  since: string;
  pid?: number;
  /** The run's start time (/proc/PID/stat), which tells it from a later process given the same pid. */
  startTime?: number;
  /** bpffs directory of a pinned set. */
  pinDir?: string;
  tcFilter?: { prio: number; handle: number };
  /** A foreground run's delay line: its counters as of `delayAt` (refreshed about every second). */
  delay?: DelayLineStats;
  delayAt?: string;
}

const nsPart = (netns: string | undefined) => netns ?? '-';
const key = (r: { netns?: string; dev: string; hook: string }) => `${nsPart(r.netns)}.${r.dev}.${r.hook}`;

function recordOf(g: AttachedGroup, seed: number): AttachmentRecord {
  const a = g.attachment;
  const state = g.loaded.maps[STATE_MAP];
  return {
    dev: a.dev,
    hook: a.hook,
    netns: a.netns,
    path: a.path,
    progId: a.progId,
    stateMapId: state?.id ?? 0,
    seed,
    rules: g.loaded.compiled.rules,
    since: new Date().toISOString(),
    tcFilter: a.tcFilter ? { prio: a.tcFilter.prio, handle: a.tcFilter.handle } : undefined,
  };
}

/** Records a foreground run's attachments; returns a function that removes the records. */
export interface RunRecord {
  /** Writes the delay lines' counters into the records (status shows them). */
  refresh(): void;
  /** Removes the records. */
  remove(): void;
}

/** Runs recorded by this process so far: a process (a test using the library) may hold several at once. */
let runsRecorded = 0;

export function recordRun(groups: AttachedGroup[], seed: number): RunRecord {
  mkdirSync(RUNS_DIR, { recursive: true });
  const me = selfRef();
  const run = runsRecorded++;
  const records = groups.map((g, i) => ({ g, file: join(RUNS_DIR, `${me.pid}.${run}.${i}.json`), rec: { ...recordOf(g, seed), pid: me.pid, startTime: me.startTime } }));
  const write = (file: string, rec: AttachmentRecord): void => {
    // Whole or not at all for a status reading it at the same moment.
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify(rec));
    renameSync(tmp, file);
  };
  for (const r of records) write(r.file, r.rec);
  return {
    refresh() {
      for (const r of records) {
        if (!r.g.delayLine) continue;
        write(r.file, { ...r.rec, delay: r.g.delayLine.stats(), delayAt: new Date().toISOString() });
      }
    },
    remove() {
      for (const r of records) rmSync(r.file, { force: true });
    },
  };
}

/**
 * Pins every group so it stays attached after this process exits. Refuses a hook that already
 * holds a pinned set. After this, closing the session's fds must not detach (see LiveSession.release).
 */
export function pinGroups(groups: AttachedGroup[], seed: number): AttachmentRecord[] {
  mkdirSync(PINNED_DIR, { recursive: true });
  const out: AttachmentRecord[] = [];
  for (const g of groups) {
    const rec = recordOf(g, seed);
    const file = join(PINNED_DIR, `${key(rec)}.json`);
    if (existsSync(file)) {
      throw new NetmangleError(`rules are already pinned on ${rec.dev} ${rec.hook}${rec.netns ? ` in ${rec.netns}` : ''}`, {
        hint: `remove them first: netmangle clear --dev ${rec.dev}${rec.netns ? ` --netns ${rec.netns}` : ''}`,
      });
    }
    const dir = join(NETMANGLE_PIN_ROOT, nsPart(rec.netns), rec.dev, rec.hook);
    rmSync(dir, { recursive: true, force: true });
    pinObject(g.loaded.prog.fd, join(dir, 'prog'));
    for (const [name, m] of Object.entries(g.loaded.maps)) pinObject(m.fd, join(dir, name));
    g.attachment.link?.pin(join(dir, 'link'));
    rec.pinDir = dir;
    writeFileSync(file, JSON.stringify(rec, null, 2));
    out.push(rec);
  }
  return out;
}

export interface StatusEntry extends AttachmentRecord {
  kind: 'pinned' | 'running' | 'orphan';
  counters?: { rules: RuleCounters[]; gso: number };
  /** Orphans: whether the program is still on its hook, or no namespace name reaches it. */
  state?: 'attached' | 'unreachable';
}

function readJson(file: string): AttachmentRecord | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as AttachmentRecord;
  } catch {
    return undefined;
  }
}

function alive(rec: AttachmentRecord): boolean {
  if (!rec.pid) return false;
  if (rec.startTime !== undefined) return processAlive({ pid: rec.pid, startTime: rec.startTime });
  try {
    process.kill(rec.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** An orphan as status lists it: what the owner's record says, the owner's pid. */
function orphanEntry(o: Orphan): StatusEntry {
  return {
    kind: 'orphan', dev: o.dev, hook: o.hook, netns: o.netns, path: 'netlink', progId: o.progId, stateMapId: 0, seed: 0,
    rules: o.rules ?? [{ name: o.progName, text: `program ${o.progName} (tag ${o.progTag})` }], since: o.since, pid: o.owner.pid,
    startTime: o.owner.startTime, tcFilter: o.tcFilter, state: o.state === 'unreachable' ? 'unreachable' : 'attached',
  };
}

/** Everything netmangle has attached: pinned sets and foreground runs, with their counters. */
export function listAttached(): StatusEntry[] {
  const out: StatusEntry[] = [];
  if (existsSync(PINNED_DIR)) {
    for (const f of readdirSync(PINNED_DIR).filter((n) => n.endsWith('.json')).sort()) {
      const rec = readJson(join(PINNED_DIR, f));
      if (!rec) continue;
      let counters;
      if (rec.pinDir && existsSync(join(rec.pinDir, STATE_MAP))) {
        try {
          using map = openPinnedMap(join(rec.pinDir, STATE_MAP));
          counters = readStateCounters(rec.rules.length, map);
        } catch {
          counters = undefined; // not root: bpffs and BPF objects are root's
        }
      }
      out.push({ ...rec, kind: 'pinned', counters });
    }
  }
  if (existsSync(RUNS_DIR)) {
    for (const f of readdirSync(RUNS_DIR).filter((n) => n.endsWith('.json')).sort()) {
      const rec = readJson(join(RUNS_DIR, f));
      if (!rec || !alive(rec)) {
        try {
          rmSync(join(RUNS_DIR, f), { force: true });
        } catch {
          // Not root: the record stays for root's next status; it is not listed either way.
        }
        continue;
      }
      let counters;
      try {
        using map = BpfMap.fromFd(mapFdById(rec.stateMapId));
        counters = readStateCounters(rec.rules.length, map);
      } catch {
        counters = undefined;
      }
      out.push({ ...rec, kind: 'running', counters });
    }
  }
  for (const o of listOrphans()) out.push(orphanEntry(o));
  return out;
}

/**
 * Removes what dead netmangle processes left attached through netlink when their guardian died
 * too (all, or those on `dev` / in `netns` / at `hook`): each only while its hook still holds
 * the recorded program id.
 */
export function clearOrphaned(filter: { dev?: string; netns?: string; hook?: string } = {}): StatusEntry[] {
  return clearOrphans(filter).map(orphanEntry);
}

/** Removes pinned rule sets (all, or those on `dev` / in `netns`); returns what was removed. */
export function clearPinned(filter: { dev?: string; netns?: string; hook?: string } = {}): AttachmentRecord[] {
  if (!existsSync(PINNED_DIR)) return [];
  const removed: AttachmentRecord[] = [];
  for (const f of readdirSync(PINNED_DIR).filter((n) => n.endsWith('.json'))) {
    const file = join(PINNED_DIR, f);
    const rec = readJson(file);
    if (!rec) continue;
    if (filter.dev !== undefined && rec.dev !== filter.dev) continue;
    if (filter.netns !== undefined && rec.netns !== filter.netns) continue;
    if (filter.hook !== undefined && rec.hook !== filter.hook) continue;
    if (rec.path === 'netlink') {
      // Attached through netlink: the pins do not hold it, so detach it explicitly.
      // Only while the hook still runs the pinned program: never someone else's.
      try {
        const ifindex = inNetns(rec.netns, () => ifindexByName(rec.dev));
        removeHold({
          netns: rec.netns, dev: rec.dev, ifindex, hook: rec.hook, progId: rec.progId, progTag: '', progName: '',
          tcFilter: rec.tcFilter, clsactAdded: false, attached: true,
        });
      } catch {
        // The interface or namespace is gone, and the program with it.
      }
    }
    // Unpinning the link drops its last reference: the kernel detaches the program.
    if (rec.pinDir) {
      rmSync(rec.pinDir, { recursive: true, force: true });
      removeEmptyParents(rec.pinDir);
    }
    unlinkSync(file);
    removed.push(rec);
  }
  return removed;
}

/** Removes the interface and namespace directories a cleared set leaves empty, up to the pin root. */
function removeEmptyParents(dir: string): void {
  for (let d = dirname(dir); d.startsWith(NETMANGLE_PIN_ROOT + '/'); d = dirname(d)) {
    try {
      if (readdirSync(d).length > 0) return;
      rmdirSync(d);
    } catch {
      return;
    }
  }
}
