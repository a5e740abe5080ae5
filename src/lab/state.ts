/**
 * What a lab is made of, recorded under /run/netmangle/labs/<name>.json before anything is
 * created and updated as the build goes, so that `netmangle lab down` can remove a lab whose
 * builder was killed half-way. The namespace naming rule (`nm-<lab>-<node>`, node names
 * without '-') is the fallback when the record itself is gone.
 */
import { mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { NetmangleError } from '../errors.js';
import type { TopologyPlan } from './topology.js';

export const STATE_DIR = '/run/netmangle/labs';

export interface LabState {
  version: 1;
  name: string;
  /** The process that built it. */
  pid: number;
  /** The user who built it (the one behind sudo when there is one); older records lack it. */
  owner?: number;
  createdAt: string;
  /** 'building' until every step succeeded. */
  status: 'building' | 'up';
  /** Every namespace the lab will have, written before the first one is created. */
  namespaces: string[];
  /** Namespaces created so far. */
  created: string[];
  plan: TopologyPlan;
}

export function statePath(name: string): string {
  return join(STATE_DIR, `${name}.json`);
}

/**
 * Creates the record, failing if one exists (the lab is up or was never taken down).
 * Returns false in that case instead of throwing, so the caller can describe the lab.
 */
export function createState(state: LabState): boolean {
  mkdirSync(STATE_DIR, { recursive: true });
  let fd: number;
  try {
    fd = openSync(statePath(state.name), 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new NetmangleError(`cannot record lab state in ${STATE_DIR}: ${(err as Error).message}`);
  }
  try {
    writeFileSync(fd, JSON.stringify(state, null, 2) + '\n');
  } finally {
    closeSync(fd);
  }
  return true;
}

/** Rewrites the record atomically (a reader never sees half a file). */
export function updateState(state: LabState): void {
  const tmp = `${statePath(state.name)}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n');
  renameSync(tmp, statePath(state.name));
}

export function readState(name: string): LabState | undefined {
  let text: string;
  try {
    text = readFileSync(statePath(name), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const s = JSON.parse(text) as LabState;
    return s && s.version === 1 && Array.isArray(s.namespaces) ? s : undefined;
  } catch {
    // A record cut short by a crash still marks the lab as existing; the sweep finds its parts.
    return undefined;
  }
}

/** Whether a record file exists at all, even an unreadable one. */
export function stateExists(name: string): boolean {
  try {
    readFileSync(statePath(name));
    return true;
  } catch {
    return false;
  }
}

export function removeState(name: string): void {
  rmSync(statePath(name), { force: true });
}

/** Names of labs with a record. */
export function recordedLabs(): string[] {
  try {
    return readdirSync(STATE_DIR)
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -'.json'.length))
      .sort();
  } catch {
    return [];
  }
}

const NODE_SUFFIX = /^[a-z][a-z0-9_]{0,11}$/;

/** Whether namespace `ns` belongs to lab `lab` by the naming rule. */
export function namespaceBelongsTo(ns: string, lab: string): boolean {
  const prefix = `nm-${lab}-`;
  return ns.startsWith(prefix) && NODE_SUFFIX.test(ns.slice(prefix.length));
}

/** The lab a namespace belongs to by the naming rule, if it looks like one of ours. */
export function labOfNamespace(ns: string): string | undefined {
  const m = /^nm-([a-z0-9][a-z0-9_-]*)-([a-z][a-z0-9_]{0,11})$/.exec(ns);
  return m ? m[1] : undefined;
}

/** The user running netmangle: the one who ran sudo, when it runs under sudo. */
export function invokingUser(): number {
  const sudo = Number(process.env.SUDO_UID);
  return Number.isInteger(sudo) && process.env.SUDO_UID !== '' ? sudo : (process.getuid?.() ?? 0);
}

/** Whether the process that wrote a record still runs. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
